"""Checkout writes metadata.json from Arrow columns; its bytes must be what msgspec would encode."""

from __future__ import annotations

import json

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egregora_ds.errors import CorruptObject
from egregora_ds.metadata_json import chunk_objects, json_strings, metadata_pieces
from egregora_ds.model import OrderRun

# Any text UTF-8 can carry (no lone surrogates), with the characters JSON must escape made likely.
texts = st.text(alphabet=st.one_of(st.sampled_from('"\\\n\r\t\b\f\x00\x01\x1f\x7f/\u2028é😀'), st.characters(exclude_categories=("Cs",))))


def _join(pieces) -> bytes:
    return b"".join(bytes(p) for p in pieces)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.none(), texts), max_size=30), cut=st.integers(0, 5))
def test_json_strings_escape_exactly_as_msgspec_does(values, cut) -> None:
    array = pa.array([None] * cut + values, pa.string()).slice(cut)  # a non-zero offset, as slices have
    expected = ["null" if v is None else msgspec.json.encode(v).decode() for v in values]
    assert json_strings(array).to_pylist() == expected


COLUMN_ORDER = ("chunk_id", "newsletter_date", "section_title", "text", "char_count")


def _table(rows: list[dict], extra: list[str | None] | None = None) -> pa.Table:
    columns = {
        "chunk_id": pa.array([r["chunk_id"] for r in rows], pa.int64()),
        "newsletter_date": pa.array([r["newsletter_date"] for r in rows], pa.string()).cast(pa.date32()),
        "section_title": pa.array([r["section_title"] for r in rows], pa.string()),
        "text": pa.array([r["text"] for r in rows], pa.string()),
        "char_count": pa.array([r["char_count"] for r in rows], pa.int64()),
    }
    columns["extra"] = pa.array(extra if extra is not None else [None] * len(rows), pa.string())
    return pa.table(columns)


chunk_rows = st.lists(
    st.fixed_dictionaries({
        "chunk_id": st.integers(-(2**63), 2**63 - 1),
        "newsletter_date": st.dates().map(lambda d: d.isoformat()),
        "section_title": st.one_of(st.none(), texts),
        "text": texts,
        "char_count": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    }),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(rows=chunk_rows, extras=st.dictionaries(st.text(max_size=5).filter(lambda k: k != "chunks"), st.integers() | texts, max_size=3))
def test_a_partition_without_extra_fields_encodes_to_msgspecs_bytes(rows, extras) -> None:
    pieces = metadata_pieces([chunk_objects(_table(rows), "t")], (OrderRun(0, len(rows)),) if rows else (), extras)
    in_column_order = [{name: row[name] for name in COLUMN_ORDER} for row in rows]  # SPEC.md §5.1 order
    assert _join(pieces) == msgspec.json.encode({"chunks": in_column_order, **extras})


def test_extra_fields_follow_the_typed_ones_and_a_non_canonical_date_keeps_its_place() -> None:
    rows = [
        {"chunk_id": 1, "newsletter_date": "2024-01-02", "section_title": None, "text": "a", "char_count": 1},
        {"chunk_id": 2, "newsletter_date": "2024-01-03", "section_title": "s", "text": "b", "char_count": 1},
        {"chunk_id": 3, "newsletter_date": "2024-01-04", "section_title": "s", "text": "c", "char_count": 1},
    ]
    extra = [None, '{"lang":"pt","score":NaN}', '{"newsletter_date":"2024-1-4","x":[1,2]}']
    document = _join(metadata_pieces([chunk_objects(_table(rows, extra), "t")], (OrderRun(0, 3),), {}))
    chunks = json.loads(document)["chunks"]
    assert list(chunks[1]) == ["chunk_id", "newsletter_date", "section_title", "text", "char_count", "lang", "score"]
    assert chunks[1]["score"] != chunks[1]["score"]  # NaN survives as NaN
    assert list(chunks[2]) == ["chunk_id", "section_title", "text", "char_count", "newsletter_date", "x"]
    assert chunks[2]["newsletter_date"] == "2024-1-4"


def test_rows_of_several_partitions_are_interleaved_by_the_row_order() -> None:
    def row(i: int) -> dict:
        return {"chunk_id": i, "newsletter_date": "2024-01-01", "section_title": None, "text": str(i), "char_count": i}

    a, b = [row(0), row(2), row(3)], [row(1), row(4)]
    order = (OrderRun(0, 1), OrderRun(1, 1), OrderRun(0, 2), OrderRun(1, 1))
    document = _join(metadata_pieces([chunk_objects(_table(a), "a"), chunk_objects(_table(b), "b")], order, {"n": 5}))
    assert document == msgspec.json.encode({"chunks": [row(i) for i in range(5)], "n": 5})


def test_an_empty_version_encodes_as_an_empty_chunk_list() -> None:
    assert _join(metadata_pieces([], (), {})) == b'{"chunks":[]}'


@pytest.mark.parametrize(
    "extra",
    [
        '{"chunk_id":9}', '{"text":"twice"}', "[1,2]", "{}", "not json", '"a string"',
        # Another spelling of an object a snapshot would write: the text is spliced verbatim, so a
        # duplicate key (readers keep the first or the last) or other escapes would restore a chunk
        # that no version recorded.
        '{"a":1,"a":2}', '{"a": 1}', '{"a":"\\u0041"}', '{"a":1.0e2}',
        '{"x":' + "[" * 120 + "]" * 120 + "}",
    ],
)
def test_an_extra_column_that_no_snapshot_could_have_written_is_reported_as_damage(extra: str) -> None:
    rows = [{"chunk_id": 1, "newsletter_date": "2024-01-02", "section_title": None, "text": "a", "char_count": 1}]
    with pytest.raises(CorruptObject, match="object x: row 0's `extra`"):
        chunk_objects(_table(rows, [extra]), "object x")
