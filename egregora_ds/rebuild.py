"""Arrow partitions -> the cache's chunks and array, in the cache's original row order."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .model import OrderRun
from .table import CHUNK_ID, DATE, EMBEDDING, EXTRA, TYPED_FIELDS


def rebuild_chunks(tables: Sequence[pa.Table], row_order: Sequence[OrderRun]) -> list[dict[str, Any]]:
    """Chunk dicts in cache order: typed columns first (in TYPED_FIELDS order), then extra fields."""
    per_partition = [_partition_chunks(table) for table in tables]
    if len(per_partition) == 1 and len(row_order) <= 1:
        return per_partition[0]
    chunks: list[dict[str, Any]] = []
    cursors = [0] * len(per_partition)
    for run in row_order:
        start = cursors[run.partition]
        chunks.extend(per_partition[run.partition][start : start + run.rows])
        cursors[run.partition] = start + run.rows
    return chunks


def extras_may_be_nonfinite(tables: Sequence[pa.Table]) -> bool:
    """Whether any chunk's extra JSON may hold NaN/±Infinity (the only floats a chunk can have:
    typed columns are strings, ints and dates). A cheap substring test; false positives only
    cost the slower, exact JSON encoder."""
    for table in tables:
        if EXTRA not in table.column_names:
            continue
        extra = table.column(EXTRA)
        if extra.null_count == len(extra):
            continue
        for token in ("NaN", "Infinity"):
            if pc.any(pc.match_substring(extra, token)).as_py():
                return True
    return False


def _partition_chunks(table: pa.Table) -> list[dict[str, Any]]:
    names = [CHUNK_ID, DATE, *(f for f in TYPED_FIELDS if f in table.column_names)]
    columns = []
    for name in names:
        column = table.column(name)
        if name == DATE:
            column = column.cast(pa.string())
        columns.append(column.to_pylist())
    chunks = [dict(zip(names, values)) for values in zip(*columns)]
    if EXTRA in table.column_names:
        extra = table.column(EXTRA)
        if extra.null_count != len(extra):
            for row, text in enumerate(extra.to_pylist()):
                if text is not None:
                    fields = json.loads(text)
                    if DATE in fields:
                        # A non-canonical date string: put it where `extra` has it, not in the date
                        # column's place, or a re-snapshot of this cache would build a differently
                        # ordered `extra` and so a different partition (SPEC 5.1: the chunk's own order).
                        del chunks[row][DATE]
                    chunks[row].update(fields)
    return chunks


def rebuild_embeddings(
    tables: Sequence[pa.Table], row_order: Sequence[OrderRun], rows: int, dim: int, dtype: str
) -> np.ndarray:
    """The (rows, dim) array with the recorded dtype, copied once from the Arrow buffers."""
    stored = np.dtype(dtype).newbyteorder("<")
    out = np.empty((rows, dim), dtype=stored)
    # Destination row ranges of each partition, in the partition's own row order.
    destinations: list[list[tuple[int, int]]] = [[] for _ in tables]
    position = 0
    for run in row_order:
        destinations[run.partition].append((position, run.rows))
        position += run.rows
    for table, ranges in zip(tables, destinations):
        _scatter(table.column(EMBEDDING), dim, ranges, out)
    if np.dtype(dtype) != stored:
        return out.astype(np.dtype(dtype))
    return out


def _scatter(column: pa.ChunkedArray, dim: int, ranges: list[tuple[int, int]], out: np.ndarray) -> None:
    """Copy a partition's vectors, chunk by chunk (row group by row group), into `out`'s row ranges."""
    range_index, range_done = 0, 0
    for chunk in column.chunks:
        # flatten() honours the chunk's offset; `.values` would not (see notes/parquet-performance.md).
        source = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        taken = 0
        while taken < len(source):
            start, length = ranges[range_index]
            count = min(length - range_done, len(source) - taken)
            out[start + range_done : start + range_done + count] = source[taken : taken + count]
            taken += count
            range_done += count
            if range_done == length:
                range_index, range_done = range_index + 1, 0
