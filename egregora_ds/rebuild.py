"""Partition tables -> the cache's array, in the cache's original row order."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from .arrow_arrays import numpy_view
from .model import OrderRun


def destination_ranges(row_order: Sequence[OrderRun], partitions: int) -> list[list[tuple[int, int]]]:
    """Per partition, the (first row, count) ranges of the cache that its rows fill, in its own order."""
    destinations: list[list[tuple[int, int]]] = [[] for _ in range(partitions)]
    position = 0
    for run in row_order:
        destinations[run.partition].append((position, run.rows))
        position += run.rows
    return destinations


def scatter_vectors(column: pa.ChunkedArray, dim: int, ranges: list[tuple[int, int]], out: np.ndarray) -> None:
    """Copy a partition's vectors, chunk by chunk (row group by row group), into `out`'s row ranges."""
    range_index, range_done = 0, 0
    for chunk in column.chunks:
        # flatten() honours the chunk's offset; `.values` would not (see notes/parquet-performance.md).
        source = numpy_view(chunk.flatten()).reshape(-1, dim)
        taken = 0
        while taken < len(source):
            start, length = ranges[range_index]
            count = min(length - range_done, len(source) - taken)
            out[start + range_done : start + range_done + count] = source[taken : taken + count]
            taken += count
            range_done += count
            if range_done == length:
                range_index, range_done = range_index + 1, 0
