"""snapshot -> checkout gives back the cache: the array bit for bit, the JSON as parsed JSON.

The property test generates caches the way the newsletter pipeline writes them (stdlib pickle and
json) but with everything that can go wrong in the metadata: odd types, missing fields, unknown
fields, non-canonical dates, interleaved rows. The reference is always what plain `pickle.load`
and `json.load` give for the original files, because that is what the pipeline would see.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import load_cache, make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.errors import UnsavedWork

#: More examples for a bug hunt: EGDS_HYPOTHESIS_EXAMPLES=2000 pytest tests/test_roundtrip.py
EXAMPLES = int(os.environ.get("EGDS_HYPOTHESIS_EXAMPLES", "60"))
KNOWN = ("newsletter_path", "section_title", "text", "char_count", "chunk_index_in_newsletter")


@dataclass
class Case:
    chunks: list[dict[str, Any]]
    embeddings: np.ndarray
    partitioning: str = "month"
    metadata_extra: dict[str, Any] = field(default_factory=dict)
    pickle_extra: dict[str, Any] = field(default_factory=dict)
    index: Any = None
    protocol: int = 4

    def __repr__(self) -> str:  # hypothesis prints this on failure; keep the array readable
        return (
            f"Case(partitioning={self.partitioning!r}, protocol={self.protocol}, dtype={self.embeddings.dtype.str}, "
            f"shape={self.embeddings.shape}, chunks={self.chunks!r}, metadata_extra={self.metadata_extra!r}, "
            f"pickle_extra={self.pickle_extra!r}, index={self.index!r}, embeddings={self.embeddings.tolist()!r})"
        )


# ---- strategies ------------------------------------------------------------------------------------

EMOJI = "🚀🇧🇷👩‍👩‍👧‍👦é\u0301ção\u0000\t\n\"\\"
texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)) | st.sampled_from(EMOJI), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # includes ints beyond int64/uint64
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
unknown_keys = texts.filter(lambda k: k not in ("chunk_id", "newsletter_date", *KNOWN))

BOUNDARY_DATES = [
    date(1969, 12, 31), date(1970, 1, 1), date(1999, 12, 31), date(2000, 1, 1),
    date(2024, 12, 31), date(2025, 1, 1), date(2025, 3, 31), date(2025, 4, 1),
    date(2025, 6, 30), date(2025, 7, 1), date(2025, 9, 30), date(2025, 10, 1), date(2025, 10, 3),
]
dates = st.sampled_from(BOUNDARY_DATES) | st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))


@st.composite
def date_strings(draw: st.DrawFn, day: date) -> str:
    """The canonical form mostly; other ISO forms Python's fromisoformat accepts sometimes."""
    form = draw(st.sampled_from(["canonical"] * 6 + ["compact", "datetime", "space", "offset", "week"]))
    if form == "canonical":
        return day.isoformat()
    if form == "compact":
        return day.strftime("%Y%m%d")
    if form == "datetime":
        return f"{day.isoformat()}T10:00:00"
    if form == "space":
        return f"{day.isoformat()} 23:59"
    if form == "offset":
        return f"{day.isoformat()}T23:30:00-05:00"
    year, week, weekday = day.isocalendar()
    return f"{year:04d}-W{week:02d}-{weekday}"


def known_value(name: str) -> st.SearchStrategy[Any]:
    if name in ("char_count", "chunk_index_in_newsletter"):
        good = st.integers(min_value=-(2**63), max_value=2**63 - 1)
        wrong = st.sampled_from(["x", True, False, 1.5, 2**63, -(2**63) - 1, [1], {"a": 1}])
    else:
        good = texts
        wrong = st.sampled_from([5, 0, True, 1.5, ["a"], {"t": "x"}])
    # Mostly right so that many partitions keep typed columns; sometimes null, missing or wrong.
    return st.sampled_from(["good"] * 8 + ["null", "missing", "wrong"]).flatmap(
        lambda kind: {"good": good, "null": st.none(), "missing": st.just(_MISSING), "wrong": wrong}[kind]
    )


_MISSING = object()


@st.composite
def caches(draw: st.DrawFn) -> Case:
    n = draw(st.integers(min_value=0, max_value=40))
    dim = draw(st.integers(min_value=1, max_value=8))
    dtype = np.dtype(draw(st.sampled_from(["<f4", "<f8", "<f4", "<f8", "<f2", ">f4", ">f8"])))
    nonfinite = draw(st.booleans())
    elements = st.floats(width=8 * dtype.itemsize, allow_nan=nonfinite, allow_infinity=nonfinite)
    array = draw(hnp.arrays(dtype, (n, dim), elements=elements))
    if draw(st.booleans()):
        array = np.asfortranarray(array)  # pickled (and read back) column-major
    pool = draw(st.lists(dates, min_size=1, max_size=5))  # few periods: rows of one period interleave
    ids = draw(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=n, max_size=n, unique=True))
    chunks = []
    for chunk_id in ids:
        chunk: dict[str, Any] = {"chunk_id": chunk_id, "newsletter_date": draw(date_strings(draw(st.sampled_from(pool))))}
        for name in KNOWN:
            value = draw(known_value(name))
            if value is not _MISSING:
                chunk[name] = value
        chunk.update(draw(st.dictionaries(unknown_keys, json_values, max_size=2)))
        keys = list(chunk)
        if draw(st.booleans()):  # the chunk's own key order is not egds's order
            keys = draw(st.permutations(keys))
        chunks.append({k: chunk[k] for k in keys})
    return Case(
        chunks=chunks,
        embeddings=array,
        partitioning=draw(st.sampled_from(["month", "quarter", "year"])),
        metadata_extra=draw(st.dictionaries(texts.filter(lambda k: k != "chunks"), json_values, max_size=3)),
        pickle_extra=draw(st.dictionaries(texts.filter(lambda k: k != "embeddings"), json_values, max_size=3)),
        index=draw(st.none() | json_values.filter(lambda v: v is not None)),
        protocol=draw(st.sampled_from([2, 3, 4, 5])),
    )


# ---- the property ----------------------------------------------------------------------------------


def _dump(value: Any) -> str:
    """Canonical text of a JSON value: dict order ignored, NaN == NaN, -0.0 != 0.0, 1 != 1.0 != True."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _write(case: Case, cache: Path) -> None:
    write_cache(
        cache, case.chunks, case.embeddings,
        metadata_extra=case.metadata_extra, pickle_extra=case.pickle_extra, index=case.index,
    )
    # The pipeline's protocol varies with the Python version; numpy pickles differ between them
    # (protocols < 5 even load a big-endian array as native-endian).
    with open(cache / "embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": case.embeddings, **case.pickle_extra}, f, protocol=case.protocol)


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(f"u{array.dtype.itemsize}") if array.size else array.reshape(-1).view("u1")


def assert_roundtrip(case: Case) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = Repository.init(root, cache="cache/rag", partitioning=case.partitioning, model="m")
        _write(case, repo.cache_path)
        allow_nonfinite = not np.isfinite(case.embeddings).all()
        result = repo.snapshot("roundtrip", allow_nonfinite=allow_nonfinite)
        assert result.created and result.rows == len(case.chunks)

        out = root / "elsewhere" / "rag"
        checked_out = repo.checkout("latest", cache=out)
        assert checked_out.rows == len(case.chunks) and not checked_out.already_current

        want_pickle, want_meta, want_index = load_cache(repo.cache_path)
        got_pickle, got_meta, got_index = load_cache(out)

        want, got = want_pickle.pop("embeddings"), got_pickle.pop("embeddings")
        assert type(got) is np.ndarray
        assert got.dtype.str == want.dtype.str
        assert got.shape == want.shape
        assert np.array_equal(_bits(got), _bits(want))
        assert got.flags.writeable

        assert _dump(got_pickle) == _dump(want_pickle)
        assert list(got_pickle) == list(want_pickle)
        assert _dump(got_meta) == _dump(want_meta)
        assert [c["chunk_id"] for c in got_meta["chunks"]] == [c["chunk_id"] for c in want_meta["chunks"]]
        # The checked-out cache is that version by content, not only by stamp (SPEC 11: deleting
        # state.json changes no result): re-analysed from scratch it matches the manifest exactly.
        (repo.store.root / "state.json").unlink()
        status = repo.status(cache=out)
        assert status.clean, status

        if case.index is None:
            assert not (out / "index.json").exists()
        else:
            assert (out / "index.json").read_bytes() == (repo.cache_path / "index.json").read_bytes()
            assert _dump(got_index) == _dump(want_index)


def _chunk(i: int, day: str, **fields: Any) -> dict[str, Any]:
    text = f"texto {i} 🚀"
    chunk = {
        "chunk_id": i, "newsletter_date": day, "newsletter_path": f"n/{day}.md", "section_title": f"S{i}",
        "text": text, "char_count": len(text), "chunk_index_in_newsletter": i % 3,
    }
    chunk.update(fields)
    return chunk


def _interleaved(n: int) -> list[dict[str, Any]]:
    days = ["2025-01-31", "2024-12-31", "2025-02-01", "2024-12-01"]
    return [_chunk(i, days[i % len(days)]) for i in range(n)]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=caches())
@example(case=Case(chunks=[], embeddings=np.zeros((0, 3), np.float32)))
@example(case=Case(chunks=[], embeddings=np.zeros((0, 1), ">f8"), metadata_extra={"v": 1}, index={"a": []}, protocol=5))
@example(case=Case(chunks=[_chunk(7, "2025-10-03")], embeddings=np.ones((1, 4), np.float32)))
@example(case=Case(chunks=[{"chunk_id": 1, "newsletter_date": "2025-10-03"}], embeddings=np.ones((1, 2), np.float32)))
@example(case=Case(chunks=[_chunk(i, f"2025-10-{i + 1:02d}") for i in range(20)], embeddings=make_embeddings(20, 8)))
@example(case=Case(chunks=_interleaved(12), embeddings=make_embeddings(12, 5, dtype=">f4"), protocol=5))
@example(case=Case(chunks=_interleaved(12), embeddings=make_embeddings(12, 5, dtype=">f4"), protocol=2))
@example(case=Case(chunks=_interleaved(9), embeddings=make_embeddings(9, 3, dtype=np.float64), partitioning="quarter"))
@example(case=Case(chunks=_interleaved(9), embeddings=make_embeddings(9, 6, dtype=np.float16), partitioning="year"))
@example(
    case=Case(
        # every known field missing (except the two required) in some chunks, present in others
        chunks=[{"chunk_id": 5, "newsletter_date": "2025-10-03"}, _chunk(6, "2025-10-04"), {"chunk_id": -3, "newsletter_date": "20251005"}],
        embeddings=make_embeddings(3, 4),
    )
)
@example(
    case=Case(
        # NaN (two payloads, both signs) and ±Inf need --allow-nonfinite; -0.0 must not become 0.0
        chunks=_interleaved(4),
        embeddings=np.array(
            [[np.nan, -np.nan, np.inf], [-np.inf, 0.0, -0.0], [-0.0, -0.0, -0.0], [0.0, 0.0, 5e-324]], dtype=np.float64
        ),
    )
)
@example(
    case=Case(
        chunks=_interleaved(3),
        embeddings=np.array([[0.0, -0.0], [-0.0, 0.0], [np.float32(np.nan), 1.0]], dtype=np.float32),
        partitioning="month",
    )
)
@example(
    case=Case(
        chunks=[
            _chunk(1, "2025-10-03T10:00:00", char_count="x", extra={"nested": [1, {"b": None}]}, big=2**64 + 1),
            _chunk(2, "2025-10-31", text=5, chunk_index_in_newsletter=True, embedding=[1.0], score=float("nan"), neg=-0.0),
            {**_chunk(3, "2025-11-01"), "section_title": None},
            {k: v for k, v in _chunk(4, "2025-09-30").items() if k != "text"},
        ],
        embeddings=make_embeddings(4, 2),
        metadata_extra={"generated": "2025-10-03", "n": 2**80, "x": float("inf")},
        pickle_extra={"model": "text-embedding-004", "dims": [1, 2.5, None, True], "nan": float("nan")},
        index={"newsletters": ["a\u0000b", "🚀"]},
        protocol=5,
    )
)
def test_snapshot_then_checkout_elsewhere_gives_back_the_same_cache(case: Case) -> None:
    assert_roundtrip(case)


# ---- checkout into the repository's own cache -------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_an_old_protocol_pickle_of_an_empty_array_round_trips(protocol: int) -> None:
    # Protocols 0-2 write an empty array's data as a call of builtins.bytes().
    assert_roundtrip(Case(chunks=[], embeddings=np.zeros((0, 4), np.float32), protocol=protocol))
    assert_roundtrip(Case(chunks=_interleaved(3), embeddings=make_embeddings(3, 2, dtype=">f8"), protocol=protocol))


def test_a_checked_out_non_canonical_date_keeps_its_place_among_the_extra_fields(repo: Repository, tmp_path: Path) -> None:
    chunks = [
        {"chunk_id": 1, "char_count": "x", "newsletter_date": "20251003", "note": "after the date"},
        {"chunk_id": 2, "newsletter_date": "2025-10-04", "text": "t"},
    ]
    write_cache(repo.cache_path, chunks, make_embeddings(2, 4))
    repo.snapshot("odd dates")
    out = tmp_path / "out"
    repo.checkout("latest", cache=out)
    _, metadata, _ = load_cache(out)
    assert list(metadata["chunks"][0]) == ["chunk_id", "char_count", "newsletter_date", "note"]
    # So the checked-out cache is the same content again, even with no stamp to say so.
    (repo.store.root / "state.json").unlink()
    assert repo.status(cache=out).clean
    repo.checkout("latest", cache=out)  # not refused as unsaved work


def test_checked_out_pickle_loads_with_plain_pickle_and_the_array_is_writeable(filled_repo: Repository, tmp_path: Path) -> None:
    out = tmp_path / "out"
    filled_repo.checkout("v1", cache=out)
    with open(out / "embeddings.pkl", "rb") as f:
        loaded = pickle.load(f)
    assert set(loaded) == {"embeddings"}
    array = loaded["embeddings"]
    assert array.flags.writeable and array.flags.c_contiguous
    array[0, 0] = 42.0  # a read-only array would raise here
    assert np.array_equal(make_embeddings(60)[1:], array[1:])


def test_checkout_refuses_to_overwrite_a_changed_cache_unless_forced(filled_repo: Repository) -> None:
    cache = filled_repo.cache_path
    chunks = make_chunks(60)
    chunks[0]["text"] = "unsaved edit"
    write_cache(cache, chunks, make_embeddings(60), index={"newsletters": 6})
    before = {name: (cache / name).read_bytes() for name in ("embeddings.pkl", "metadata.json", "index.json")}

    with pytest.raises(UnsavedWork, match="egds snapshot"):
        filled_repo.checkout("v1")
    assert {name: (cache / name).read_bytes() for name in before} == before  # untouched

    result = filled_repo.checkout("v1", force=True)
    assert result.version == 1 and not result.already_current
    _, metadata, _ = load_cache(cache)
    assert metadata["chunks"] == make_chunks(60)


def test_checkout_refuses_even_when_the_state_file_is_gone(filled_repo: Repository) -> None:
    # The stamp is only an optimisation: without it the cache is parsed and compared with every version.
    write_cache(filled_repo.cache_path, make_chunks(59), make_embeddings(59), index={"newsletters": 6})
    (filled_repo.store.root / "state.json").unlink()
    with pytest.raises(UnsavedWork):
        filled_repo.checkout("v1")


def test_checkout_of_the_version_the_cache_already_holds_is_already_current(filled_repo: Repository) -> None:
    before = (filled_repo.cache_path / "embeddings.pkl").stat().st_mtime_ns
    result = filled_repo.checkout("latest")
    assert result.already_current and result.version == 1 and result.bytes_read == 0
    assert (filled_repo.cache_path / "embeddings.pkl").stat().st_mtime_ns == before


def test_checkout_of_an_older_version_over_a_saved_cache_needs_no_force(filled_repo: Repository) -> None:
    cache = filled_repo.cache_path
    write_cache(cache, make_chunks(61), make_embeddings(61), index={"newsletters": 7})
    filled_repo.snapshot("v2")
    result = filled_repo.checkout("v1")
    assert result.version == 1 and not result.already_current
    pickled, metadata, index = load_cache(cache)
    assert metadata == {"chunks": make_chunks(60)} and index == {"newsletters": 6}
    assert np.array_equal(pickled["embeddings"], make_embeddings(60))
    assert filled_repo.status().clean is False  # the cache is v1, latest is v2
    assert filled_repo.checkout("v1").already_current
