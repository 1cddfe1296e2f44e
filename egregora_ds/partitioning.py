"""Time partitioning of rows by the period of `newsletter_date` (pure, vectorised)."""

from __future__ import annotations

import numpy as np

from .model import OrderRun


def period_keys(days: np.ndarray, partitioning: str) -> tuple[list[str], np.ndarray]:
    """Map days since 1970-01-01 to sorted period keys and a per-row code into them.

    Keys: `2025-10` (month), `2025-Q4` (quarter), `2025` (year). Codes are int64 indices into
    the returned key list, which is sorted ascending (chronological, since keys are zero-padded).
    """
    months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    if partitioning == "month":
        period = months
    elif partitioning == "quarter":
        period = np.floor_divide(months, 3)
    elif partitioning == "year":
        period = np.floor_divide(months, 12)
    else:
        raise ValueError(f"unknown partitioning {partitioning!r}")
    unique, codes = np.unique(period, return_inverse=True)
    return [_key(int(p), partitioning) for p in unique], codes.astype(np.int64, copy=False)


def _key(period: int, partitioning: str) -> str:
    if partitioning == "month":
        return f"{1970 + period // 12:04d}-{period % 12 + 1:02d}"
    if partitioning == "quarter":
        return f"{1970 + period // 4:04d}-Q{period % 4 + 1}"
    return f"{1970 + period:04d}"


def order_runs(codes: np.ndarray) -> tuple[OrderRun, ...]:
    """Run-length encode the partition code of each row, in cache order.

    A cache sorted by date gives one run per partition; interleaved rows give more runs.
    """
    if len(codes) == 0:
        return ()
    starts = np.concatenate(([0], np.flatnonzero(np.diff(codes)) + 1))
    lengths = np.diff(np.concatenate((starts, [len(codes)])))
    return tuple(OrderRun(int(codes[s]), int(n)) for s, n in zip(starts, lengths))


def rows_by_partition(codes: np.ndarray, count: int) -> list[np.ndarray]:
    """Row indices of each partition, ascending (so each partition keeps the cache's relative order)."""
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=count))))
    return [order[bounds[p] : bounds[p + 1]] for p in range(count)]
