"""Cache <-> Arrow: typed columns, time partitions, the canonical content hash.

Only this module and `parquet_io` touch pyarrow on the hot path. The per-row Python work is
one list comprehension per column (decoding JSON already produced the dicts); everything else
is vectorised, and the embedding column is a zero-copy view of the cache's array.
"""

from __future__ import annotations

import json
import operator
import struct
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property
from typing import Any, Iterator, Sequence

import blake3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_arrays import (
    bool_values,
    filled_values,
    int64_array,
    numeric_array,
    numpy_view,
    string_array,
    text_scalar,
    valid_values,
)
from .cache import CacheContents, shown as shown_value
from .errors import CacheError, NonFiniteEmbeddings
from .model import OrderRun
from .partitioning import order_runs, period_keys, rows_by_partition

CHUNK_ID = "chunk_id"
DATE = "newsletter_date"
EXTRA = "extra"
EMBEDDING = "embedding"
#: Optional chunk fields stored as typed columns, in the order they are written back.
TYPED_FIELDS: dict[str, tuple[pa.DataType, type]] = {
    "newsletter_path": (pa.string(), str),
    "section_title": (pa.string(), str),
    "text": (pa.string(), str),
    "char_count": (pa.int64(), int),
    "chunk_index_in_newsletter": (pa.int64(), int),
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MISSING = object()
CONTENT_HASH_TAG = b"egds-content-v1\n"
_EMPTY_TEXT = text_scalar("", large=True)


@dataclass(frozen=True)
class PartitionTable:
    key: str
    table: pa.Table
    min_chunk_id: int
    max_chunk_id: int

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @cached_property
    def content_hash(self) -> str:
        """Computed on first use, so a snapshot can hash in its writer threads (blake3 releases the GIL)."""
        return content_hash(self.table)


@dataclass(frozen=True)
class PartitionedCache:
    partitions: list[PartitionTable]
    row_order: tuple[OrderRun, ...]
    rows: int
    dim: int
    dtype: str
    """The cache array's dtype string (`<f4`); stored little-endian, restored to this."""


@dataclass(frozen=True)
class CacheLayout:
    """A validated cache and where each row goes; `tables()` builds the partitions one at a time.

    Everything that can reject a cache is checked here, so a caller may start writing the first
    partition while the next one is still being built."""

    keys: list[str]
    row_order: tuple[OrderRun, ...]
    rows: int
    dim: int
    dtype: str
    _chunks: Sequence[dict[str, Any]]
    _rows_of: list[np.ndarray]
    _chunk_ids: pa.Array
    _dates: pa.Array
    _date_is_canonical: np.ndarray
    _vectors: pa.FixedSizeListArray

    def tables(self) -> Iterator[PartitionTable]:
        """Each partition's table, in key order."""
        for p, key in enumerate(self.keys):
            yield self._partition(key, self._rows_of[p])

    def partitioned(self) -> PartitionedCache:
        return PartitionedCache(list(self.tables()), self.row_order, self.rows, self.dim, self.dtype)

    def _partition(self, key: str, rows: np.ndarray) -> PartitionTable:
        contiguous = rows[-1] - rows[0] == len(rows) - 1
        if contiguous:  # the usual case (a cache sorted by date): list slices and zero-copy Arrow slices
            first, count = int(rows[0]), len(rows)
            chunks = self._chunks[first : first + count]

            def rows_of(array: pa.Array) -> pa.Array:
                return array.slice(first, count)
        else:
            chunks = [self._chunks[i] for i in rows.tolist()]
            taken = numeric_array(rows.astype(np.int64))

            def rows_of(array: pa.Array) -> pa.Array:
                return array.take(taken)

        # A field is a typed column in a partition only when every row there has it with the right
        # type; otherwise the partition keeps it in `extra`. Deciding per partition keeps an odd chunk
        # from changing the layout (and so the objects) of every other partition.
        typed: dict[str, pa.Array] = {}
        for name, (_, kind) in TYPED_FIELDS.items():
            column = _typed_column(_field(chunks, name), kind)
            if column is not None:
                typed[name] = column
        date_is_canonical = self._date_is_canonical[rows]
        # Every row has chunk_id, the date and each typed field: any other key goes to `extra`.
        needs_extra = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks)) > 2 + len(typed)
        needs_extra |= ~date_is_canonical
        arrays = [rows_of(self._chunk_ids), rows_of(self._dates), *typed.values()]
        arrays += [_extra_column(chunks, needs_extra, typed, date_is_canonical), rows_of(self._vectors)]
        names = [CHUNK_ID, DATE, *typed, EXTRA, EMBEDDING]
        table = pa.Table.from_arrays(arrays, names=names)
        ids = numpy_view(arrays[0])
        return PartitionTable(key, table, int(ids.min()), int(ids.max()))


def _where(chunks: Sequence[dict[str, Any]], row: int) -> str:
    chunk_id = chunks[row].get(CHUNK_ID) if isinstance(chunks[row], dict) else None
    return f"metadata.json: chunks[{row}]" + (f" (chunk_id {chunk_id})" if chunk_id is not None else "")


def partition_cache(contents: CacheContents, partitioning: str, allow_nonfinite: bool = False) -> PartitionedCache:
    """Validate a cache and split it into per-period Arrow tables with their content hashes."""
    return lay_out_cache(contents, partitioning, allow_nonfinite).partitioned()


def lay_out_cache(contents: CacheContents, partitioning: str, allow_nonfinite: bool = False) -> CacheLayout:
    """Validate a cache (every error a user can cause) and assign its rows to partitions."""
    chunks, array = contents.chunks, contents.embeddings
    n = len(chunks)
    if array.shape[0] != n:
        raise CacheError(
            f"embeddings.pkl has {array.shape[0]} rows but metadata.json has {n} chunks; "
            "they must match row for row (re-run the pipeline's embedding step)"
        )
    not_dicts = [] if set(map(type, chunks)) <= {dict} else [i for i, c in enumerate(chunks) if type(c) is not dict]
    if not_dicts:
        raise CacheError(
            f"metadata.json: chunks[{not_dicts[0]}] is not a JSON object ({len(not_dicts)} such chunks); every chunk "
            "must be an object with chunk_id and newsletter_date: fix the pipeline's output or remove those entries"
        )
    chunk_ids = _chunk_id_column(chunks)
    days, date_is_canonical = _date_column(chunks)
    vectors = _embedding_values(array, chunks, chunk_ids, allow_nonfinite)
    keys, codes = period_keys(days, partitioning)
    return CacheLayout(
        keys=keys,
        row_order=order_runs(codes),
        rows=n,
        dim=array.shape[1],
        dtype=array.dtype.str,
        _chunks=chunks,
        _rows_of=rows_by_partition(codes, len(keys)),
        _chunk_ids=chunk_ids,
        _dates=numeric_array(days.astype(np.int32), pa.date32()),
        _date_is_canonical=date_is_canonical,
        _vectors=vectors,
    )


def _typed_column(values: list[Any], kind: type) -> pa.Array | None:
    """The Arrow column of `values` when every one is `kind` or None (and fits), else None.

    `set(map(type, ...))` runs in C. bool is not int here: its type is `bool`, so True never
    passes as 1. A str UTF-8 cannot carry (a lone surrogate) keeps the field out of the typed
    columns, so `extra` stores it (escaped)."""
    if not set(map(type, values)) <= {kind, type(None)}:
        return None
    try:
        return int64_array(values) if kind is int else string_array(values)
    except (OverflowError, UnicodeEncodeError):
        return None


def _field(chunks: Sequence[dict[str, Any]], name: str) -> list[Any]:
    """One field of every chunk (`_MISSING` where absent), at C speed."""
    return list(map(operator.methodcaller("get", name, _MISSING), chunks))


def _chunk_id_column(chunks: Sequence[dict[str, Any]]) -> pa.Array:
    values = _field(chunks, CHUNK_ID)
    ids = None
    if set(map(type, values)) <= {int}:
        try:
            ids = np.fromiter(values, dtype=np.int64, count=len(values))
        except OverflowError:
            pass
    if ids is None:
        bad = [i for i, v in enumerate(values) if type(v) is not int or not _INT64_MIN <= v <= _INT64_MAX]
        value = values[bad[0]]
        shown = "missing" if value is _MISSING else shown_value(value)
        raise CacheError(
            f"{_where(chunks, bad[0])}: chunk_id is {shown}; every chunk needs an integer chunk_id "
            f"({len(bad)} chunks affected)"
        )
    column = numeric_array(ids)
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        duplicated = unique[counts > 1]
        rows = np.flatnonzero(ids == duplicated[0])[:5].tolist()
        raise CacheError(
            f"metadata.json: chunk_id {int(duplicated[0])} appears {int(counts[counts > 1][0])} times "
            f"(chunks{rows}); {len(duplicated)} ids are duplicated; chunk ids must be unique"
        )
    return column


#: Days since 1970-01-01 of the first and last dates Python's `date` holds: 0001-01-01, 9999-12-31.
_FIRST_DAY, _LAST_DAY = (date(1, 1, 1) - date(1970, 1, 1)).days, (date(9999, 12, 31) - date(1970, 1, 1)).days


def _date_column(chunks: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Days since the epoch per chunk, and whether each original string is the canonical `YYYY-MM-DD`.

    One rule, whichever path parses (SPEC.md §5.1): a date is what `date.fromisoformat` or
    `datetime.fromisoformat` accepts, so years 1..9999. Arrow's cast (the fast path, for canonical
    strings) also accepts year 0; a column with such a date takes the Python path, which refuses it."""
    raw = list(map(operator.methodcaller("get", DATE), chunks))
    n = len(raw)
    if not set(map(type, raw)) <= {str}:
        row = next(i for i, v in enumerate(raw) if type(v) is not str)
        shown = "missing" if DATE not in chunks[row] else shown_value(raw[row])
        raise CacheError(f"{_where(chunks, row)}: newsletter_date is {shown}; every chunk needs an ISO date string")
    try:
        strings = string_array(raw)
        dates = pc.cast(strings, pa.date32())
        days = filled_values(dates, "<i4").astype(np.int64)
        if n == 0 or (days.min() >= _FIRST_DAY and days.max() <= _LAST_DAY):
            canonical = bool_values(pc.equal(pc.cast(dates, pa.string()), strings))
            return days, canonical
    except (pa.ArrowInvalid, UnicodeEncodeError):
        pass  # some dates are not plain YYYY-MM-DD: parse one by one to accept other ISO forms
    days = np.empty(n, dtype=np.int64)
    epoch = date(1970, 1, 1)
    for i, text in enumerate(raw):
        try:
            parsed = date.fromisoformat(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text).date()
            except ValueError:
                raise CacheError(
                    f"{_where(chunks, i)}: newsletter_date {shown_value(text)} is not an ISO date (YYYY-MM-DD, year 1 to "
                    "9999); fix the chunk"
                ) from None
        days[i] = (parsed - epoch).days
    # Only a 10-character `YYYY-MM-DD` can be canonical, and one that parsed is ASCII; the others
    # (which may hold characters UTF-8 cannot carry: `datetime.fromisoformat` takes any character
    # as its date-time separator) are never compared.
    maybe = np.array([len(t) == 10 and t[4] == "-" and t[7] == "-" for t in raw], dtype=bool)
    candidates = [t if m else "" for t, m in zip(raw, maybe.tolist())]
    formatted = pc.cast(numeric_array(days.astype(np.int32), pa.date32()), pa.string())
    return days, maybe & bool_values(pc.equal(formatted, string_array(candidates)))


def _extra_column(
    chunks: Sequence[dict[str, Any]], needs_extra: np.ndarray, typed: dict[str, Any], date_is_canonical: np.ndarray
) -> pa.Array:
    """JSON text of each chunk's fields that no typed column holds (null for most rows).

    Non-ASCII characters are written as they are, except in the rare text that holds a lone
    surrogate (UTF-8 cannot carry it): that chunk's JSON escapes everything, which loads back
    to the same string."""
    values: list[str | None] = [None] * len(chunks)
    for row in np.flatnonzero(needs_extra).tolist():
        kept = {
            k: v
            for k, v in chunks[row].items()
            if k != CHUNK_ID and not (k == DATE and date_is_canonical[row]) and k not in typed
        }
        text = json.dumps(kept, ensure_ascii=False, separators=(",", ":"))
        try:
            text.encode()
        except UnicodeEncodeError:
            text = json.dumps(kept, ensure_ascii=True, separators=(",", ":"))
        values[row] = text
    return string_array(values)


def _embedding_values(
    array: np.ndarray, chunks: Sequence[dict[str, Any]], chunk_ids: pa.Array, allow_nonfinite: bool
) -> pa.FixedSizeListArray:
    if not allow_nonfinite:
        bad_rows = _nonfinite_rows(array)
        if len(bad_rows):
            first = int(bad_rows[0])
            raise NonFiniteEmbeddings(
                f"embeddings.pkl: {len(bad_rows)} rows contain NaN or ±Inf (first: row {first}, "
                f"chunk_id {chunk_ids[first].as_py()}); fix them or pass --allow-nonfinite"
            )
    native = array.astype(array.dtype.newbyteorder("<"), copy=False) if array.dtype.byteorder == ">" else array
    native = np.ascontiguousarray(native)
    values = numeric_array(native.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, array.shape[1])


def _nonfinite_rows(array: np.ndarray, block: int = 65536) -> np.ndarray:
    """Rows with NaN/Inf, checked in blocks so a 3 GB array never needs a 3 GB mask."""
    found = []
    for start in range(0, array.shape[0], block):
        part = array[start : start + block]
        finite = np.isfinite(part).all(axis=1)
        if not finite.all():
            found.append(np.flatnonzero(~finite) + start)
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


# ---- content hash ---------------------------------------------------------------------------------


def content_hash(table: pa.Table) -> str:
    """blake3 over a canonical encoding of the table's logical content (SPEC.md, "Content hash").

    Independent of Parquet writer, compression, chunking, string vs large_string, and buffer
    offsets; dependent on every value, every column name and type, and row order.
    """
    hasher = blake3.blake3()
    hasher.update(CONTENT_HASH_TAG)
    header = "".join(f"{f.name}:{_canonical_type(f.type)}\n" for f in table.schema)
    _update(hasher, header.encode())
    hasher.update(struct.pack("<Q", table.num_rows))
    for column in table.columns:
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        _hash_array(hasher, array)
    return hasher.hexdigest()


def _canonical_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "utf8"
    if pa.types.is_fixed_size_list(arrow_type):
        return f"fixed_size_list<{_canonical_type(arrow_type.value_type)},{arrow_type.list_size}>"
    if pa.types.is_dictionary(arrow_type):
        return _canonical_type(arrow_type.value_type)
    return str(arrow_type)


def _update(hasher: Any, data: Any) -> None:
    view = memoryview(data).cast("B")
    hasher.update(struct.pack("<Q", len(view)))
    hasher.update(view)


def _hash_array(hasher: Any, array: pa.Array) -> None:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if array.null_count:
        _update(hasher, np.packbits(valid_values(array), bitorder="little"))
    else:
        _update(hasher, b"")
    arrow_type = array.type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        array = array.cast(pa.large_string())
        if array.null_count:
            array = pc.fill_null(array, _EMPTY_TEXT)
        offsets = np.frombuffer(array.buffers()[1], dtype="<i8")[array.offset : array.offset + len(array) + 1]
        start, end = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
        _update(hasher, _little_endian(offsets - start, "<i8"))
        data = array.buffers()[2]
        _update(hasher, memoryview(data)[start:end] if data is not None else b"")
    elif pa.types.is_fixed_size_list(arrow_type):
        values = numpy_view(array.flatten())
        _update(hasher, _little_endian(values, values.dtype))
    elif pa.types.is_date32(arrow_type):
        _update(hasher, _little_endian(filled_values(array, "<i4"), "<i4"))
    elif pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        _update(hasher, numpy_view(array))
    else:
        raise TypeError(f"content hash: unsupported column type {arrow_type}")


def _little_endian(values: np.ndarray, dtype: Any) -> np.ndarray:
    # A no-op (no copy) on little-endian machines with contiguous input, which is the usual case.
    return np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
