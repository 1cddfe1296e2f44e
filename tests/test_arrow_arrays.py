"""egds builds Arrow arrays without `pa.array` (which imports pandas); they must equal pyarrow's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.arrow_arrays import bool_values, int64_array, numpy_view, string_array, valid_values

texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), texts), max_size=40))
def test_string_array_equals_pyarrows_conversion(values) -> None:
    built = string_array(values)
    assert built.type == pa.string() and built.null_count == values.count(None)
    assert built.equals(pa.array(values, pa.string()))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=40))
def test_int64_array_equals_pyarrows_conversion(values) -> None:
    assert int64_array(values).equals(pa.array(values, pa.int64()))


@pytest.mark.parametrize("bad", [[2**63], [-(2**63) - 1], [True], [1.0], ["1"]])
def test_int64_array_refuses_what_int64_cannot_hold_exactly(bad) -> None:
    with pytest.raises((OverflowError, TypeError)):
        int64_array([1, *bad])


def test_string_array_refuses_a_lone_surrogate() -> None:
    with pytest.raises(UnicodeEncodeError):
        string_array(["ok", "broken \ud800 emoji"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), st.booleans()), max_size=40), st.integers(0, 9), st.integers(0, 9))
def test_bool_and_validity_views_honour_offsets_and_nulls(values, start, length) -> None:
    array = pa.array(values, pa.bool_()).slice(start, length)
    expected = array.to_pylist()
    assert bool_values(array).tolist() == [bool(v) for v in expected]
    assert valid_values(array).tolist() == [v is not None for v in expected]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=40), st.integers(0, 9))
def test_numpy_view_reads_sliced_values_with_nulls_as_zero(values, start) -> None:
    array = pa.array(values, pa.int64()).slice(start)
    assert numpy_view(array).tolist() == [0 if v is None else v for v in array.to_pylist()]


def test_snapshot_and_checkout_never_import_pandas(tmp_path: Path) -> None:
    # pandas is installed here (the test extra): a pyarrow call that probes for it would import it.
    script = f"""
import sys
from pathlib import Path
from egregora_ds import Repository
from egregora_ds.sample import write_sample_cache
root = Path({str(tmp_path)!r})
write_sample_cache(root / "cache", rows=300, dim=8, months=3)
repo = Repository.init(root, cache=root / "cache")
repo.snapshot("v1")
(repo.store.root / "state.json").unlink()
repo.status()
repo.checkout("v1", cache=root / "out")
assert "pandas" not in sys.modules, "pandas was imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)


def test_a_text_with_a_lone_surrogate_survives_the_round_trip(repo: Repository, tmp_path: Path) -> None:
    chunks = make_chunks(30)
    write_cache(repo.cache_path, chunks, make_embeddings(30))
    chunks[4]["text"] = "metade de um emoji \ud83d"  # what a UTF-16 split leaves behind
    (repo.cache_path / "metadata.json").write_text(json.dumps({"chunks": chunks}))  # ASCII: escaped as \ud83d
    assert repo.snapshot("v1").created
    repo.checkout("v1", cache=tmp_path / "out")
    rebuilt = json.loads((tmp_path / "out" / "metadata.json").read_bytes())
    assert rebuilt == json.loads((repo.cache_path / "metadata.json").read_bytes())
    assert rebuilt["chunks"][4]["text"].endswith("\ud83d")
    # The rebuilt cache, parsed again (no stamp), is the content v1 records.
    repo.checkout("v1", cache=repo.cache_path, force=True)
    (repo.store.root / "state.json").unlink()
    assert not repo.snapshot("again").created
