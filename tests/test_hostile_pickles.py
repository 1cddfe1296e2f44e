"""Hostile pickles (issue 10, items 3 and 4): the cache reader builds arrays only from validated
descriptions, so a pickle can neither crash the interpreter nor make it allocate more than a small
multiple of the file's size. Each case of the corpus (tests/fixtures/hostile_pickles.py) runs in a
subprocess, under an address-space limit and a time bound: a crash or a memory blow-up fails the
test instead of killing the test runner. Legitimate pickles of every protocol still load exactly as
plain `pickle.load` loads them.
"""

from __future__ import annotations

import io
import json
import pickle
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fixtures.hostile_pickles import corpus
from egregora_ds.safe_pickle import load_data_pickle

EGDS = Path(sys.executable).with_name("egds")
TESTS = Path(__file__).parent
#: Plenty for egds and its libraries (~400 MiB mapped after imports), far below what any bomb needs.
ADDRESS_SPACE_LIMIT = 1536 << 20
TIME_LIMIT = 120


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


# Snapshot each case in a fresh repository and report what happened, one JSON line per case. A
# crash (signal) or a MemoryError that escapes ends the whole subprocess, which the test reports.
_RUN_CORPUS = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from conftest import repo_tree
    from fixtures.hostile_pickles import corpus
    from egregora_ds import Repository
    from egregora_ds.errors import EgdsError

    for case in corpus():
        with tempfile.TemporaryDirectory() as tmp:
            repo = Repository.init(Path(tmp), cache="cache", partitioning="month", model="m")
            repo.cache_path.mkdir(parents=True)
            (repo.cache_path / "embeddings.pkl").write_bytes(case.data)
            (repo.cache_path / "metadata.json").write_text('{"chunks": [{"chunk_id": 1, "newsletter_date": "2025-01-01"}]}')
            before = repo_tree(repo.root)
            try:
                repo.snapshot("hostile")
                outcome = {"error": None}
            except EgdsError as exc:
                outcome = {"error": type(exc).__name__, "message": str(exc), "exit": exc.exit_code}
            outcome.update(name=case.name, unchanged=repo_tree(repo.root) == before)
            print(json.dumps(outcome), flush=True)
    print(json.dumps({"done": True}), flush=True)
    """
)


def test_every_hostile_pickle_is_refused_with_one_line_in_bounded_memory_and_time(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_CORPUS, str(TESTS)],
        capture_output=True, text=True, timeout=TIME_LIMIT, preexec_fn=_limited, cwd=tmp_path,
    )
    assert proc.returncode == 0, f"the reader died (status {proc.returncode}): {proc.stderr[-2000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[-1] == {"done": True}
    outcomes = {line["name"]: line for line in lines[:-1]}
    cases = corpus()
    assert list(outcomes) == [case.name for case in cases]
    for case in cases:
        outcome = outcomes[case.name]
        assert outcome["error"] in ("UnsafePickle", "CacheError"), (case.name, outcome)
        assert outcome["exit"] == 1
        assert "\n" not in outcome["message"] and "embeddings.pkl" in outcome["message"], (case.name, outcome)
        assert case.expect in outcome["message"], (case.name, outcome["message"])
        assert outcome["unchanged"], f"{case.name}: the refused snapshot wrote to .egds"


def test_the_segfaulting_pickle_kills_stock_numpy_but_egds_refuses_it_cleanly(tmp_path: Path, repo) -> None:
    (case,) = [c for c in corpus() if c.crashes_stock_numpy]
    # The fixture is the real attack: plain pickle.loads of it dies with SIGSEGV.
    stock = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print('survived')"],
        input=case.data, capture_output=True, timeout=TIME_LIMIT,
    )
    assert stock.returncode == -signal.SIGSEGV, (stock.returncode, stock.stdout, stock.stderr[-500:])
    repo.cache_path.mkdir(parents=True)
    (repo.cache_path / "embeddings.pkl").write_bytes(case.data)
    (repo.cache_path / "metadata.json").write_text('{"chunks": [{"chunk_id": 1, "newsletter_date": "2025-01-01"}]}')
    for command in (["snapshot", "-m", "x"], ["status"]):
        proc = subprocess.run(
            [str(EGDS), "-C", str(repo.root), *command],
            capture_output=True, text=True, timeout=TIME_LIMIT, preexec_fn=_limited,
        )
        assert proc.returncode == 1, (command, proc.returncode, proc.stderr[-1000:])
        assert proc.stderr.startswith("egds: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "O8" in proc.stderr and "not a plain numeric type" in proc.stderr


# ---- legitimate pickles load exactly as plain pickle loads them ------------------------------------

NUMERIC = ["<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "<i8", ">i4", "|u1", "|i1", "|b1", "<c16", ">c8", "<u2"]


def _numpy1_names(data: bytes) -> bytes:
    """The same pickle as numpy 1.x writes it (module `numpy.core`, not `numpy._core`). Protocols
    0-3 name globals with newline-terminated text, so the names can be swapped in place."""
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray").replace(b"numpy._core.numeric", b"numpy.core.numeric")


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(NUMERIC)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    array = draw(hnp.arrays(dtype, shape))
    if draw(st.booleans()):
        array = np.asfortranarray(array)
    if draw(st.booleans()) and array.ndim >= 1 and array.shape[0] > 1:
        array = array[::2]  # not contiguous: protocol 5 falls back to numpy's state form
    return array


def _same(got: object, want: object) -> None:
    assert type(got) is type(want)
    if isinstance(want, np.ndarray):
        assert (got.dtype.str, got.shape, got.flags.f_contiguous, got.flags.c_contiguous) == (
            want.dtype.str, want.shape, want.flags.f_contiguous, want.flags.c_contiguous,
        )
        assert got.tobytes(order="A") == want.tobytes(order="A")
    elif isinstance(want, np.generic):
        assert got.dtype.str == want.dtype.str and got.tobytes() == want.tobytes()
    else:
        assert got == want


@settings(max_examples=150, deadline=None)
@given(array=arrays(), protocol=st.integers(min_value=0, max_value=5), numpy1=st.booleans())
def test_a_numeric_array_of_any_protocol_loads_exactly_as_plain_pickle_loads_it(array, protocol, numpy1) -> None:
    data = pickle.dumps({"embeddings": array, "n": 1}, protocol=protocol)
    if numpy1 and protocol <= 3:
        data = _numpy1_names(data)
    want = pickle.loads(data)
    got = load_data_pickle(io.BytesIO(data), "embeddings.pkl")
    assert list(got) == ["embeddings", "n"] and got["n"] == 1
    _same(got["embeddings"], want["embeddings"])


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("value", [np.float64(1.5), np.float32(-0.0), np.int64(-7), np.bool_(True), np.complex64(1 - 2j)])
def test_a_numpy_scalar_loads_as_plain_pickle_loads_it(value, protocol) -> None:
    data = pickle.dumps({"x": value}, protocol=protocol)
    _same(load_data_pickle(io.BytesIO(data), "embeddings.pkl")["x"], pickle.loads(data)["x"])


def test_a_bare_array_and_one_referenced_twice_load(tmp_path: Path) -> None:
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    for protocol in range(6):
        data = pickle.dumps(array, protocol=protocol)
        _same(load_data_pickle(io.BytesIO(data), "embeddings.pkl"), pickle.loads(data))
        data = pickle.dumps({"embeddings": array, "again": array}, protocol=protocol)
        loaded = load_data_pickle(io.BytesIO(data), "embeddings.pkl")
        _same(loaded["embeddings"], pickle.loads(data)["embeddings"])
        _same(loaded["again"], pickle.loads(data)["again"])
