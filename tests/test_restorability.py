"""Restorability is an invariant (issue 9 item 2): whatever a cache holds, `snapshot` either refuses
it with a one-line error and records nothing, or `checkout` into a fresh directory gives back the
exact cache. Never "recorded but unrestorable".

The property test writes adversarial caches the way a pipeline (or a careless script) can: lone
surrogates anywhere (text, other fields, keys, extras, index.json, even as raw CESU bytes in the
file), non-canonical and out-of-range dates, NaN / Infinity / 1e400 / integers beyond 64 bits,
nesting around the depth limit, unknown fields, every float dtype and byte order, 0..N rows, every
pickle protocol. The reference is what plain `pickle.load` and `json.loads` give for the files.

CI runs a bounded number of examples; `EGDS_HYPOTHESIS_PROFILE=long` (tests/conftest.py) runs
thousands: `EGDS_HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -q tests/test_restorability.py -k property`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import make_chunks, make_embeddings, repo_tree, write_cache
from egregora_ds import Repository
from egregora_ds.errors import CacheError, EgdsError, UsageError, describe_os_error

#: Bounded in CI; the long profile (EGDS_HYPOTHESIS_PROFILE=long) sets its own count.
EXAMPLES = settings.default.max_examples if os.environ.get("EGDS_HYPOTHESIS_PROFILE") else 40
EGDS = Path(sys.executable).with_name("egds")


# ---- exact comparison of parsed JSON / pickled values -----------------------------------------------


def canonical(value: Any) -> Any:
    """A form in which equal means identical: NaN equals NaN, -0.0 differs from 0.0, 1 from 1.0 and
    True, lone surrogates compare as themselves, dict order is ignored, list order is not."""
    kind = type(value)
    if kind is float:
        return ("float", struct.pack("<d", value) if not math.isnan(value) else "nan")
    if kind is bool or kind is int or kind is str or value is None:
        return (kind.__name__, value)
    if kind is list:
        return ("list", tuple(canonical(v) for v in value))
    if kind is dict:
        return ("dict", tuple(sorted((k, canonical(v)) for k, v in value.items())))
    raise TypeError(f"not a JSON value: {kind}")


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def assert_restored(got: Path, want: Path) -> None:
    want_pickle, got_pickle = _load_pickle(want), _load_pickle(got)
    want_array, got_array = want_pickle.pop("embeddings"), got_pickle.pop("embeddings")
    assert (got_array.dtype.str, got_array.shape) == (want_array.dtype.str, want_array.shape)
    assert _bits(got_array) == _bits(want_array)
    assert list(got_pickle) == list(want_pickle)
    assert canonical(got_pickle) == canonical(want_pickle)
    assert canonical(json.loads((got / "metadata.json").read_bytes())) == canonical(json.loads((want / "metadata.json").read_bytes()))
    if (want / "index.json").exists():
        assert (got / "index.json").read_bytes() == (want / "index.json").read_bytes()
    else:
        assert not (got / "index.json").exists()


def _load_pickle(cache: Path) -> dict[str, Any]:
    with open(cache / "embeddings.pkl", "rb") as f:
        return pickle.load(f)


# ---- writing adversarial files ------------------------------------------------------------------------


class RawNumber:
    """A JSON number token that json.dumps cannot write itself (`1e400`, `-1E+400`, 400-digit ints)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return f"RawNumber({self.token!r})"


def dump_json(value: Any, encoding: str) -> bytes:
    """`value` as JSON bytes in one of the ways a file can hold it: `ascii` (json.dump's default,
    `\\ud800` escapes), `utf-8` (raw; lone surrogates as CESU bytes, which json.loads accepts),
    or `utf-16`."""
    tokens: dict[str, str] = {}

    def swap(item: Any) -> Any:
        if isinstance(item, RawNumber):
            marker = f"\ue000{len(tokens)}\ue000"
            tokens[marker] = item.token
            return marker
        if isinstance(item, list):
            return [swap(v) for v in item]
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        return item

    text = json.dumps(swap(value), ensure_ascii=encoding == "ascii")
    for marker, token in tokens.items():
        text = text.replace(json.dumps(marker, ensure_ascii=encoding == "ascii"), token)
    if encoding == "utf-16":
        return text.encode("utf-16", "surrogatepass")
    return text.encode("utf-8", "surrogatepass")


def plain(value: Any) -> Any:
    """`value` with RawNumbers as Python parses them (what the pickle gets: pickle has no tokens)."""
    if isinstance(value, RawNumber):
        limit = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)  # a pickle holds any int; only its text form is limited
        try:
            return json.loads(value.token)
        finally:
            sys.set_int_max_str_digits(limit)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclass
class Cache:
    chunks: list[Any]
    embeddings: np.ndarray
    metadata_extra: dict[str, Any] = field(default_factory=dict)
    pickle_extra: dict[Any, Any] = field(default_factory=dict)
    index: Any = None
    encoding: str = "ascii"
    protocol: int = 5
    partitioning: str = "month"

    def write(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        try:
            data = pickle.dumps({"embeddings": self.embeddings, **plain(self.pickle_extra)}, protocol=self.protocol)
        except ValueError:  # protocol 0 writes ints as text, so no pipeline could write this pickle
            reject()
        (path / "embeddings.pkl").write_bytes(data)
        (path / "metadata.json").write_bytes(dump_json({"chunks": self.chunks, **self.metadata_extra}, self.encoding))
        if self.index is not None:
            (path / "index.json").write_bytes(dump_json(self.index, self.encoding))

    def __repr__(self) -> str:
        return (
            f"Cache(encoding={self.encoding!r}, protocol={self.protocol}, partitioning={self.partitioning!r}, "
            f"dtype={self.embeddings.dtype.str}, shape={self.embeddings.shape}, chunks={self.chunks!r}, "
            f"metadata_extra={self.metadata_extra!r}, pickle_extra={self.pickle_extra!r}, index={self.index!r})"
        )


REASONS = [
    "is not an ISO date", "levels deep", "4300", "Python cannot read", "chunk_id", "not a JSON object",
    "not a string", "cannot store losslessly", "newsletter_date is", "appears", "rows but",
]


def _reason(message: str) -> str:
    """Which rule refused a cache, for the statistics of a long run (paths and values left out)."""
    return next((reason for reason in REASONS if reason in message), message.split(": ", 1)[-1][:50])


def check_restorable(cache: Cache) -> str:
    """The invariant. Returns what happened (for the statistics of a long run)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = Repository.init(root, cache="cache/rag", partitioning=cache.partitioning, model="m")
        cache.write(repo.cache_path)
        before = repo_tree(root)
        try:
            result = repo.snapshot("adversarial", allow_nonfinite=True)
        except EgdsError as exc:
            message = str(exc)
            assert message.strip() and "\n" not in message, f"not one line: {message!r}"
            assert repo_tree(root) == before, "a refused snapshot recorded something"
            return f"refused ({type(exc).__name__}): {_reason(message)}"
        assert result.created
        out = root / "elsewhere" / "rag"
        repo.checkout("latest", cache=out)
        assert_restored(out, repo.cache_path)
        # The restored cache is that version by content, not only by stamp: re-read from scratch
        # it analyses to the same manifest.
        (repo.store.root / "state.json").unlink()
        assert repo.status(cache=out).clean
        return "restored"


# ---- strategies ---------------------------------------------------------------------------------

SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d", "\ude80", "\udcff"]
SPECIALS = ["\x00", "\t", "\n", '"', "\\", "\u2028", "\u2029", "\ufeff", "\uffff", "🚀", "é", "\u0301"]
texts = st.text(alphabet=st.characters(codec=None) | st.sampled_from(SURROGATES + SPECIALS), max_size=12)
keys = texts
raw_numbers = st.sampled_from(["1e400", "-1e400", "1E+400", "-0", "-0.0", "0e0", "1" + "0" * 400, "-" + "9" * 300] * 3 + ["1" + "0" * 5000])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, float("nan"), float("inf"), -float("inf")])
    | texts
)
json_values = st.recursive(scalars | raw_numbers.map(RawNumber), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


deep_values = st.integers(min_value=95, max_value=105).map(nested)


def rarely(odd: st.SearchStrategy[Any], usual: st.SearchStrategy[Any], one_in: int = 20) -> st.SearchStrategy[Any]:
    """`usual`, and `odd` about once in `one_in` draws: most caches must be restorable, or the
    property would mostly test refusals."""
    return one_time_in(one_in).flatmap(lambda now: odd if now else usual)


def one_time_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in `n` draws (an integer test like `integers(0, n) == 0` is true far more
    often: hypothesis favours small and boundary values)."""
    return st.sampled_from([False] * (n - 1) + [True])

DATES = [date(2025, 10, 3), date(2024, 12, 31), date(2025, 1, 1), date(1, 1, 1), date(9999, 12, 31), date(1969, 12, 31)]


@st.composite
def date_strings(draw: st.DrawFn) -> Any:
    day = draw(st.sampled_from(DATES) | st.dates())
    form = draw(
        st.sampled_from(
            ["canonical"] * 16 + ["compact", "datetime", "offset", "utc", "fraction", "space", "week", "surrogate-separator"] * 2 + ["odd"]
        )
    )
    iso = day.isoformat()
    if form == "canonical":
        return iso
    if form == "compact":
        return day.strftime("%Y%m%d") if day.year >= 1000 else iso
    if form == "datetime":
        return f"{iso}T10:00:00"
    if form == "offset":
        return f"{iso}T23:30:00-05:00"
    if form == "utc":
        return f"{iso}T00:00:00+00:00"
    if form == "fraction":
        return f"{iso}T01:02:03.123456"
    if form == "space":
        return f"{iso} 23:59"
    if form == "week":
        year, week, weekday = day.isocalendar()
        return f"{year:04d}-W{week:02d}-{weekday}"
    if form == "surrogate-separator":  # datetime.fromisoformat takes any separator
        return f"{iso}\ud80010:00"
    return draw(st.sampled_from(["0000-01-01", "0000-12-31", "10000-01-01", "2025-02-29", "2025-13-01", "", "x", 20251003, None]))


KNOWN = {
    "newsletter_path": texts,
    "section_title": st.none() | texts,
    "text": texts,
    "char_count": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "chunk_index_in_newsletter": st.integers(min_value=0, max_value=10),
}
WRONG = st.sampled_from([5, True, 1.5, None, ["a"], {"t": "x"}, 2**64, "x"])


@st.composite
def chunk_lists(draw: st.DrawFn, n: int) -> list[Any]:
    if n and draw(one_time_in(30)):  # rarely: ids that are not unique or not int64
        ids = draw(st.lists(st.sampled_from([1, 1, 2**63, -(2**63) - 1, True, "7"]), min_size=n, max_size=n))
    else:
        ids = draw(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=n, max_size=n, unique=True))
    chunks: list[Any] = []
    for chunk_id in ids:
        chunk: dict[str, Any] = {"chunk_id": chunk_id, "newsletter_date": draw(date_strings())}
        for name, good in KNOWN.items():
            kind = draw(st.sampled_from(["good"] * 6 + ["missing", "wrong"]))
            if kind != "missing":
                chunk[name] = draw(good if kind == "good" else WRONG)
        chunk.update(draw(st.dictionaries(keys.filter(lambda k: k not in ("chunk_id", "newsletter_date", *KNOWN)), json_values, max_size=2)))
        if draw(one_time_in(60)):
            chunk["deep"] = draw(deep_values)
        order = list(chunk)
        if draw(st.booleans()):
            order = draw(st.permutations(order))
        chunks.append({k: chunk[k] for k in order})
    if n and draw(one_time_in(40)):
        chunks[0] = draw(st.sampled_from([[1], "chunk", None, 5]))  # not an object: refused
    return chunks


@st.composite
def caches(draw: st.DrawFn) -> Cache:
    n = draw(st.integers(min_value=0, max_value=12))
    dim = draw(st.integers(min_value=1, max_value=5))
    dtype = np.dtype(draw(st.sampled_from(["<f2", ">f2", "<f4", ">f4", "<f8", ">f8"])))
    array = draw(hnp.arrays(dtype, (n, dim), elements=st.floats(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True)))
    if draw(st.booleans()):
        array = np.asfortranarray(array)
    metadata_extra = draw(st.dictionaries(keys.filter(lambda k: k != "chunks"), rarely(deep_values, json_values), max_size=3))
    pickle_extra = draw(st.dictionaries(keys.filter(lambda k: k != "embeddings"), json_values, max_size=3))
    if draw(one_time_in(20)):  # what a pickle can hold and JSON cannot: refused
        pickle_extra[draw(st.sampled_from([1, (1, 2), b"k"]))] = 1
    if draw(one_time_in(20)):
        pickle_extra["odd"] = draw(st.sampled_from([(1, 2), b"bytes", {1, 2}, np.float32(1.5), np.arange(3)]))
    encoding = draw(st.sampled_from(["ascii", "ascii", "utf-8", "utf-16"]))
    return Cache(
        chunks=draw(chunk_lists(n)),
        embeddings=array,
        metadata_extra=metadata_extra,
        pickle_extra=pickle_extra,
        index=draw(rarely(deep_values, st.none() | json_values)),
        encoding=encoding,
        protocol=draw(st.integers(min_value=0, max_value=5)),
        partitioning=draw(st.sampled_from(["month", "quarter", "year"])),
    )


def _chunk(i: int, day: str = "2025-10-03", **fields: Any) -> dict[str, Any]:
    return {"chunk_id": i, "newsletter_date": day, "text": f"t{i}", **fields}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(cache=caches())
@example(cache=Cache([_chunk(1, "20251003", text="a\ud800b")], np.ones((1, 2), np.float32)))
@example(cache=Cache([_chunk(1)], np.ones((1, 2), np.float32), metadata_extra={"k\udfff": ["\ud800", RawNumber("1e400")]}))
@example(cache=Cache([_chunk(1)], np.ones((1, 2), np.float32), pickle_extra={"\ud83d": "\ude80", "n": float("nan")}, index={"\ud800": 1}))
@example(cache=Cache([_chunk(1, "2025-10-03\ud80010:00")], np.ones((1, 2), ">f8"), encoding="utf-8"))
@example(cache=Cache([_chunk(1, "0000-01-01")], np.ones((1, 2), np.float16)))
@example(cache=Cache([_chunk(1, "0001-01-01"), _chunk(2, "9999-12-31T23:59:59-05:00")], np.ones((2, 2), np.float32), partitioning="year"))
@example(cache=Cache([_chunk(1, deep=nested(97))], np.ones((1, 2), np.float32), metadata_extra={"d": nested(99)}, index=nested(100)))
@example(cache=Cache([_chunk(1, deep=nested(98))], np.ones((1, 2), np.float32)))
@example(cache=Cache([], np.zeros((0, 3), "<f2"), metadata_extra={"x": RawNumber("1" + "0" * 5000)}, protocol=0))
def test_property_snapshot_refuses_in_one_line_or_checkout_restores_the_exact_cache(cache: Cache) -> None:
    event(check_restorable(cache))  # --hypothesis-show-statistics: how many were restored, refused and why


# ---- the reproductions ---------------------------------------------------------------------


def _write_escaped(path: Path, chunks: list, metadata_extra: dict | None = None, pickle_extra: dict | None = None, index: Any = None) -> None:
    Cache(chunks, make_embeddings(len(chunks), 4), metadata_extra or {}, pickle_extra or {}, index).write(path)


def test_a_non_canonical_date_and_a_lone_surrogate_in_the_text_check_out(repo: Repository, tmp_path: Path) -> None:
    _write_escaped(repo.cache_path, [_chunk(1, "20251003", text="a\ud800b"), _chunk(2)])
    repo.snapshot("odd")
    repo.checkout("latest", tmp_path / "out")
    assert_restored(tmp_path / "out", repo.cache_path)
    assert json.loads((tmp_path / "out" / "metadata.json").read_bytes())["chunks"][0]["text"] == "a\ud800b"


@pytest.mark.parametrize(
    "where",
    ["metadata-value", "metadata-key", "pickle-value", "pickle-key", "index", "chunk-key", "date-separator"],
)
def test_a_lone_surrogate_anywhere_in_a_cache_is_stored_and_restored_exactly(repo: Repository, tmp_path: Path, where: str) -> None:
    chunks = [_chunk(1), _chunk(2, "2025-11-01")]
    arguments: dict[str, Any] = {
        "metadata-value": {"metadata_extra": {"generated": "x\udfffy"}},
        "metadata-key": {"metadata_extra": {"\ud800": 1}},
        "pickle-value": {"pickle_extra": {"model": "\udcff"}},
        "pickle-key": {"pickle_extra": {"\ud83d": [1]}},
        "index": {"index": {"\ude80": "\ud800"}},
        "chunk-key": {},
        "date-separator": {},
    }[where]
    if where == "chunk-key":
        chunks[0]["\ud800key"] = "\udfff"
    if where == "date-separator":
        chunks[0]["newsletter_date"] = "2025-10-03\ud80010:00"
    _write_escaped(repo.cache_path, chunks, **arguments)
    repo.snapshot("surrogates")
    repo.checkout("latest", tmp_path / "out")
    assert_restored(tmp_path / "out", repo.cache_path)


# ---- one date rule (issue 10 item 14) --------------------------------------------------------------


@pytest.mark.parametrize("odd", ["0000-01-01", "0000-12-31"])
@pytest.mark.parametrize("others", ["none", "canonical", "non-canonical"])
def test_a_year_zero_date_is_refused_whatever_the_other_chunks_are(repo: Repository, odd: str, others: str) -> None:
    # The fast path (every date canonical) and the Python path (one is not) apply one rule.
    chunks = [_chunk(1, odd)] + {"none": [], "canonical": [_chunk(2)], "non-canonical": [_chunk(2, "20251003")]}[others]
    write_cache(repo.cache_path, chunks, make_embeddings(len(chunks), 4))
    before = repo_tree(repo.root)
    with pytest.raises(CacheError) as raised:
        repo.snapshot("year zero")
    assert odd in str(raised.value) and "year 1 to 9999" in str(raised.value) and "\n" not in str(raised.value)
    assert repo_tree(repo.root) == before


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31", "1969-12-31"])
@pytest.mark.parametrize("others", ["none", "canonical", "non-canonical"])
def test_the_first_and_last_years_python_holds_are_accepted_whatever_the_other_chunks_are(
    repo: Repository, tmp_path: Path, day: str, others: str
) -> None:
    chunks = [_chunk(1, day)] + {"none": [], "canonical": [_chunk(2)], "non-canonical": [_chunk(2, "20251003")]}[others]
    write_cache(repo.cache_path, chunks, make_embeddings(len(chunks), 4))
    repo.snapshot("edges")
    assert day[:4] in {p.key[:4] for p in repo.show()[1].partitions}
    repo.checkout("latest", tmp_path / "out")
    assert_restored(tmp_path / "out", repo.cache_path)


# ---- JSON nested deep (issue 10 item 15) and numbers Python cannot write ---------------------------------


@pytest.mark.parametrize(
    "where, depth",
    [("chunk", 1000), ("chunk", 98), ("metadata", 1000), ("metadata", 100), ("index", 1000), ("index", 101), ("index", 100_000), ("pickle", 100_000)],
)
def test_json_nested_deeper_than_egds_reads_is_refused_in_one_line(repo: Repository, where: str, depth: int) -> None:
    path = repo.cache_path
    write_cache(path, [_chunk(1)], make_embeddings(1, 4))
    brackets = "[" * depth + "]" * depth
    if where == "chunk":
        (path / "metadata.json").write_text('{"chunks": [{"chunk_id": 1, "newsletter_date": "2025-10-03", "deep": ' + brackets + "}]}")
    elif where == "metadata":
        (path / "metadata.json").write_text('{"chunks": [{"chunk_id": 1, "newsletter_date": "2025-10-03"}], "deep": ' + brackets + "}")
    elif where == "index":
        (path / "index.json").write_text(brackets)
    else:  # a pickle nests without recursion: the lists are built bottom-up on the unpickler's stack
        data = pickle.dumps({"embeddings": make_embeddings(1, 4), "deep": []}, protocol=4)
        empty_list_of_deep = pickle.SHORT_BINUNICODE + b"\x04deep" + pickle.MEMOIZE + pickle.EMPTY_LIST
        assert empty_list_of_deep in data
        data = data.replace(empty_list_of_deep, empty_list_of_deep[:-1] + pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1))
        data = data.replace(data[2:11], pickle.FRAME + (len(data) - 11).to_bytes(8, "little"), 1) if data[2:3] == pickle.FRAME else data
        (path / "embeddings.pkl").write_bytes(data)
    before = repo_tree(repo.root)
    with pytest.raises(CacheError) as raised:
        repo.snapshot("deep")
    assert "\n" not in str(raised.value) and "levels deep" in str(raised.value)
    assert repo_tree(repo.root) == before


def test_json_nested_up_to_the_limit_is_stored_and_restored(repo: Repository, tmp_path: Path) -> None:
    chunks = [_chunk(1, deep=nested(97)), _chunk(2)]
    write_cache(repo.cache_path, chunks, make_embeddings(2, 4), metadata_extra={"d": nested(99)}, pickle_extra={"p": nested(99)}, index=nested(100))
    repo.snapshot("deep but fine")
    repo.checkout("latest", tmp_path / "out")
    assert_restored(tmp_path / "out", repo.cache_path)


@pytest.mark.parametrize("where", ["metadata", "pickle"])
def test_an_integer_of_more_digits_than_python_writes_is_refused_in_one_line(repo: Repository, where: str) -> None:
    write_cache(repo.cache_path, [_chunk(1)], make_embeddings(1, 4), pickle_extra={"n": 10**5000} if where == "pickle" else None)
    if where == "metadata":
        (repo.cache_path / "metadata.json").write_text('{"chunks": [], "n": 1' + "0" * 5000 + "}")
    with pytest.raises(CacheError) as raised:
        repo.snapshot("big")
    assert "\n" not in str(raised.value) and ("4300" in str(raised.value) or "digits" in str(raised.value))


def test_a_snapshot_message_utf8_cannot_carry_is_refused_before_anything_is_written(repo: Repository) -> None:
    write_cache(repo.cache_path, [_chunk(1)], make_embeddings(1, 4))
    before = repo_tree(repo.root)
    with pytest.raises(UsageError) as raised:
        repo.snapshot("bad \udcff bytes")
    assert "snapshot message" in str(raised.value) and "\n" not in str(raised.value)
    assert repo_tree(repo.root) == before


# ---- a full disk (issue 10 item 17) ----------------------------------------------------------------


def _temp_files(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name.endswith(".egds-tmp") or p.name.endswith(".tmp")]


def _fsync_fails_with_enospc(monkeypatch: pytest.MonkeyPatch, after: int = 0) -> None:
    """fsync raises ENOSPC (as the kernel reports delayed write-back of a full disk), without a
    file name, like the real call; the first `after` calls succeed."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("after", [0, 1])
def test_a_checkout_onto_a_full_disk_removes_its_temp_files_keeps_the_old_cache_and_names_the_file(
    filled_repo: Repository, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61), index={"newsletters": 7})
    filled_repo.snapshot("v2")
    cache = filled_repo.cache_path
    before = {name: (cache / name).read_bytes() for name in ("embeddings.pkl", "metadata.json", "index.json")}
    _fsync_fails_with_enospc(monkeypatch, after)
    with pytest.raises(OSError) as raised:
        filled_repo.checkout("v1")
    monkeypatch.undo()
    message = describe_os_error(raised.value)
    assert str(cache) in message and "No space left" in message and "free some space" in message
    assert _temp_files(cache) == [], "the failed checkout left temp files holding the space"
    assert {name: (cache / name).read_bytes() for name in before} == before
    assert filled_repo.checkout("v1").version == 1  # and the next try works


def test_a_snapshot_onto_a_full_disk_names_the_file_it_was_writing(filled_repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61), index={"newsletters": 7})
    head = filled_repo.head()
    _fsync_fails_with_enospc(monkeypatch)
    with pytest.raises(OSError) as raised:
        filled_repo.snapshot("v2")
    monkeypatch.undo()
    message = describe_os_error(raised.value)
    assert str(filled_repo.store.root) in message and "No space left" in message
    assert filled_repo.head() == head


def _limit_file_size() -> None:
    # Files may grow to 64 KiB: the state file and journal fit, the cache's pickle does not.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


def test_a_checkout_whose_write_fails_mid_file_leaves_no_temp_file_and_prints_the_path(repo: Repository) -> None:
    write_cache(repo.cache_path, make_chunks(100), make_embeddings(100, dim=256), index={"n": 1})  # ~100 KiB pickle
    repo.snapshot("v1")
    write_cache(repo.cache_path, make_chunks(101), make_embeddings(101, dim=256), index={"n": 2})
    repo.snapshot("v2")
    cache = repo.cache_path
    before = {name: (cache / name).read_bytes() for name in ("embeddings.pkl", "metadata.json", "index.json")}
    proc = subprocess.run(
        [str(EGDS), "-C", str(repo.root), "checkout", "v1"],
        capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("egds: error: File too large: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert str(cache / "embeddings.pkl") in proc.stderr
    assert _temp_files(cache) == []
    assert {name: (cache / name).read_bytes() for name in before} == before
