"""Partition tables -> the bytes of `metadata.json`, assembled by Arrow string kernels.

Checkout never builds a Python object per chunk: each chunk's JSON object is joined from its
columns' JSON text by Arrow kernels, which release the GIL (so reader threads do it in
parallel). A chunk with fields in `extra` gets them spliced in from the stored JSON text, which
is parsed only to check it. The output is compact UTF-8 JSON; for a chunk without extras it is
byte-identical to `msgspec.json.encode` of the chunk dict (tests/test_metadata_json.py checks
escaping against msgspec for arbitrary strings).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_arrays import bool_array, numeric_array, text_scalar, valid_values
from .cache import MAX_JSON_DEPTH, encode_json, json_value_problem, stdlib_json
from .errors import CorruptObject
from .model import OrderRun
from .table import CHUNK_ID, DATE, EXTRA, TYPED_FIELDS

_TEXT = pa.large_string()
# JSON's mandatory escapes (byte -> escape), spelled as msgspec and the stdlib spell them.
_SHORT_ESCAPES = {0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0C: b"\\f", 0x0D: b"\\r", 0x22: b'\\"', 0x5C: b"\\\\"}
_ESCAPE = {c: _SHORT_ESCAPES.get(c, b"\\u%04x" % c) for c in (*range(0x20), 0x22, 0x5C)}


def _text(value: str) -> pa.Scalar:
    return text_scalar(value, large=True)


def json_strings(array: pa.Array) -> pa.Array:
    """Each string as a JSON string literal (quoted, escaped); nulls as `null`."""
    text = array.cast(_TEXT)
    quoted = pc.binary_join_element_wise(_text('"'), _escaped(pc.fill_null(text, _text(""))), _text('"'), _text(""))
    return pc.if_else(text.is_valid(), quoted, _text("null")) if text.null_count else quoted


def _escaped(text: pa.Array) -> pa.Array:
    """`text` with `"`, `\\` and control characters escaped. In UTF-8 every byte below 0x80 is the
    ASCII character itself, so the search and the replacements work on the raw bytes: one numpy
    pass finds them (usually none), `bytes.replace` rewrites the buffer and the offsets move by the
    bytes each string gained. `text` has no nulls."""
    _, offsets_buffer, data_buffer = text.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype="<i8")[text.offset : text.offset + len(text) + 1]
    if data_buffer is None or offsets[-1] == offsets[0]:
        return text
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    special = data < 0x20
    special |= data == 0x22
    special |= data == 0x5C
    positions = np.flatnonzero(special)
    if not len(positions):
        return text
    found = data[positions]
    grown = np.zeros(256, dtype=np.int64)
    for code in np.unique(found).tolist():
        grown[code] = len(_ESCAPE[code]) - 1
    owner = np.searchsorted(offsets, positions + offsets[0], side="right") - 1  # the string each byte is in
    per_string = np.bincount(owner, weights=grown[found], minlength=len(text))
    new_offsets = np.empty(len(text) + 1, dtype=np.int64)
    new_offsets[0] = 0
    np.cumsum(offsets[1:] - offsets[:-1] + per_string.astype(np.int64), out=new_offsets[1:])
    escaped = data.tobytes()
    for code in sorted(np.unique(found).tolist(), key=lambda c: c != 0x5C):  # the backslash first
        escaped = escaped.replace(bytes([code]), _ESCAPE[code])
    return pa.Array.from_buffers(_TEXT, len(text), [None, pa.py_buffer(new_offsets), pa.py_buffer(escaped)], null_count=0)


def _json_values(column: pa.Array) -> pa.Array:
    if pa.types.is_integer(column.type):
        return pc.fill_null(column.cast(_TEXT), _text("null"))
    if pa.types.is_date32(column.type):
        return json_strings(column.cast(pa.string()))
    return json_strings(column)


def chunk_objects(table: pa.Table, where: str) -> pa.Array:
    """Each row's chunk as a JSON object followed by `,`: typed columns in table order, then the
    members of `extra` spliced in as stored (SPEC.md §11), as `large_string`. A row whose `extra`
    holds its original `newsletter_date` (a non-canonical string) leaves the date column out, so
    the date stands where `extra` puts it."""
    names = [CHUNK_ID, DATE, *(f for f in TYPED_FIELDS if f in table.column_names)]
    extra = table.column(EXTRA).combine_chunks() if EXTRA in table.column_names else None
    if extra is not None and extra.null_count == len(extra):
        extra = None
    dated_by_extra = None
    if extra is not None:
        # Checked first, since the stored text is spliced into the output as it is.
        extra = extra.cast(_TEXT)
        dated_by_extra = _check_extras(extra, names, where)
    parts: list[Any] = []
    for i, name in enumerate(names):
        key = _text(("{" if i == 0 else ",") + msgspec.json.encode(name).decode() + ":")
        member = [key, _json_values(table.column(name).combine_chunks())]
        if name == DATE and dated_by_extra is not None and len(dated_by_extra):
            mask = np.zeros(len(table), dtype=bool)
            mask[dated_by_extra] = True
            parts.append(pc.if_else(bool_array(mask), _text(""), pc.binary_join_element_wise(*member, _text(""))))
        else:
            parts += member
    if extra is None:
        parts.append(_text("},"))
    else:
        # "{typed...," + the extra object without its "{" + ","
        extra_fields = pc.binary_join_element_wise(_text(","), pc.utf8_slice_codeunits(extra, 1), _text(""))
        parts += [pc.if_else(extra.is_null(), _text("}"), extra_fields), _text(",")]
    return pc.binary_join_element_wise(*parts, _text(""))


def _check_extras(extra: pa.Array, names: list[str], where: str) -> np.ndarray:
    """Validate every `extra` (it is spliced verbatim, so it must be exactly one JSON object of
    fields the typed columns lack); return the rows whose `extra` holds the chunk's date."""
    rows = np.flatnonzero(valid_values(extra))
    typed = set(names)
    dated = []
    for row, text in zip(rows.tolist(), extra.take(numeric_array(rows.astype(np.int64))).to_pylist()):
        try:
            fields = msgspec.json.decode(text)
        except (msgspec.DecodeError, RecursionError):
            try:
                fields = json.loads(text)  # NaN, Infinity or huge exponents, as json.dumps writes them
            except (ValueError, RecursionError):
                fields = None
        # A chunk nests in metadata.json's object and list; only a text with that many brackets
        # can nest deeper than a cache may (the walk is for those few).
        too_deep = text.count("[") + text.count("{") > MAX_JSON_DEPTH - 2 and json_value_problem(fields, depth=2) is not None
        # The text is spliced as it is (its first character dropped): it must be exactly the one
        # spelling a snapshot writes, which also puts the braces first and last.
        if (
            not isinstance(fields, dict)
            or not fields
            or CHUNK_ID in fields
            or (typed - {DATE}) & fields.keys()
            or too_deep
            or not _is_canonical(text, fields)
        ):
            raise CorruptObject(
                f"{where}: row {row}'s `extra` is not a JSON object of fields the typed columns lack, so no snapshot "
                "wrote it; nothing was written. Restore the object from a remote or another copy"
            )
        if DATE in fields:
            dated.append(row)
    return np.array(dated, dtype=np.int64)


def _is_canonical(text: str, fields: dict[str, Any]) -> bool:
    """Whether `text` is exactly what a snapshot writes for `fields` (`stdlib_json`): the text is
    spliced into metadata.json as it is, so another spelling of the same object (a duplicate key,
    which JSON readers resolve differently, or other escapes) would restore something no version
    recorded. msgspec writes the same bytes as the stdlib for everything but floats, much faster."""
    try:
        if msgspec.json.encode(fields).decode() == text and not _holds_float(fields):
            return True
    except (TypeError, OverflowError, msgspec.EncodeError, UnicodeEncodeError):
        pass
    return stdlib_json(fields).decode() == text


def _holds_float(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return False


def metadata_pieces(objects: Sequence[pa.Array], row_order: Sequence[OrderRun], extras: dict[str, Any]) -> list[memoryview]:
    """`{"chunks":[...], ...extras}` as a list of buffers (written in order, never joined in memory):
    each partition's chunk objects interleaved by `row_order`."""
    pieces = [memoryview(b'{"chunks":[')]
    cursors = [0] * len(objects)
    for run in row_order:
        start = cursors[run.partition]
        pieces.append(_data_between(objects[run.partition], start, start + run.rows))
        cursors[run.partition] = start + run.rows
    if len(pieces) > 1:
        pieces[-1] = pieces[-1][:-1]  # the last chunk's trailing comma
    tail = b"]"
    if extras:
        tail += b"," + encode_json(extras)[1:-1]
    pieces.append(memoryview(tail + b"}"))
    return pieces


def _data_between(strings: pa.Array, start: int, stop: int) -> memoryview:
    """The UTF-8 bytes of rows [start, stop) of a large_string array, without copying."""
    offsets = np.frombuffer(strings.buffers()[1], dtype="<i8")[strings.offset : strings.offset + len(strings) + 1]
    data = strings.buffers()[2]
    return memoryview(data)[int(offsets[start]) : int(offsets[stop])] if data is not None else memoryview(b"")
