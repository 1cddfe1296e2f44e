"""Partition keys of dates, and the run-length row order that interleaves partitions back."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from egregora_ds.model import OrderRun
from egregora_ds.partitioning import order_runs, period_keys, rows_by_partition

EPOCH = date(1970, 1, 1)


def days(*dates: date) -> np.ndarray:
    return np.array([(d - EPOCH).days for d in dates], dtype=np.int64)


def expected_key(d: date, partitioning: str) -> str:
    if partitioning == "month":
        return f"{d.year:04d}-{d.month:02d}"
    if partitioning == "quarter":
        return f"{d.year:04d}-Q{(d.month - 1) // 3 + 1}"
    return f"{d.year:04d}"


def keys_of(dates: list[date], partitioning: str) -> list[str]:
    keys, codes = period_keys(days(*dates), partitioning)
    return [keys[c] for c in codes]


def test_month_keys_across_the_epoch_and_a_new_year() -> None:
    dates = [date(2025, 1, 1), date(1969, 12, 31), date(2024, 12, 31), date(1970, 1, 1), date(1970, 1, 31)]
    keys, codes = period_keys(days(*dates), "month")
    assert keys == ["1969-12", "1970-01", "2024-12", "2025-01"]
    assert codes.tolist() == [3, 0, 2, 1, 1]
    assert codes.dtype == np.int64


def test_quarter_keys_at_every_quarter_boundary() -> None:
    dates = [date(2025, m, d) for m, d in [(1, 1), (3, 31), (4, 1), (6, 30), (7, 1), (9, 30), (10, 1), (12, 31)]]
    assert keys_of(dates, "quarter") == ["2025-Q1", "2025-Q1", "2025-Q2", "2025-Q2", "2025-Q3", "2025-Q3", "2025-Q4", "2025-Q4"]
    assert keys_of([date(1969, 12, 31), date(1969, 10, 1), date(1969, 9, 30), date(1970, 1, 1)], "quarter") == [
        "1969-Q4", "1969-Q4", "1969-Q3", "1970-Q1",
    ]


def test_year_keys_before_and_after_1970() -> None:
    dates = [date(1969, 12, 31), date(1970, 1, 1), date(1900, 6, 1), date(2025, 12, 31), date(2026, 1, 1)]
    assert keys_of(dates, "year") == ["1969", "1970", "1900", "2025", "2026"]


def test_keys_of_the_first_and_last_representable_dates_are_zero_padded() -> None:
    dates = [date(1, 1, 1), date(999, 12, 31), date(9999, 12, 31)]
    assert keys_of(dates, "month") == ["0001-01", "0999-12", "9999-12"]
    assert keys_of(dates, "quarter") == ["0001-Q1", "0999-Q4", "9999-Q4"]
    assert keys_of(dates, "year") == ["0001", "0999", "9999"]


def test_no_rows_give_no_keys() -> None:
    keys, codes = period_keys(np.empty(0, dtype=np.int64), "month")
    assert keys == [] and codes.shape == (0,)
    assert order_runs(codes) == ()
    assert rows_by_partition(codes, 0) == []


def test_an_unknown_partitioning_is_refused() -> None:
    with pytest.raises(ValueError, match="week"):
        period_keys(days(EPOCH), "week")


@given(
    dates=st.lists(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)), max_size=30),
    partitioning=st.sampled_from(["month", "quarter", "year"]),
)
@settings(max_examples=100, deadline=None)
def test_period_keys_agree_with_the_calendar_and_are_sorted(dates: list[date], partitioning: str) -> None:
    keys, codes = period_keys(days(*dates), partitioning)
    assert [keys[c] for c in codes] == [expected_key(d, partitioning) for d in dates]
    assert keys == sorted(set(keys)) and len(keys) == len({expected_key(d, partitioning) for d in dates})


# ---- row order --------------------------------------------------------------------------------------


def test_order_runs_of_a_sorted_cache_are_one_run_per_partition() -> None:
    assert order_runs(np.array([0, 0, 0, 1, 1, 2])) == (OrderRun(0, 3), OrderRun(1, 2), OrderRun(2, 1))


def test_order_runs_of_interleaved_rows() -> None:
    codes = np.array([1, 0, 0, 1, 1, 1, 0, 2])
    assert order_runs(codes) == (OrderRun(1, 1), OrderRun(0, 2), OrderRun(1, 3), OrderRun(0, 1), OrderRun(2, 1))
    assert order_runs(np.array([4])) == (OrderRun(4, 1),)


def test_rows_by_partition_keeps_the_cache_order_inside_each_partition() -> None:
    codes = np.array([1, 0, 0, 1, 1, 1, 0, 2])
    assert [rows.tolist() for rows in rows_by_partition(codes, 3)] == [[1, 2, 6], [0, 3, 4, 5], [7]]
    assert [rows.tolist() for rows in rows_by_partition(np.array([0, 0]), 2)] == [[0, 1], []]


codes_strategy = st.integers(min_value=1, max_value=6).flatmap(
    lambda count: st.tuples(
        st.just(count),
        hnp.arrays(np.int64, st.integers(min_value=0, max_value=60), elements=st.integers(min_value=0, max_value=count - 1)),
    )
)


@given(case=codes_strategy)
@settings(max_examples=200, deadline=None)
def test_concatenating_partitions_by_runs_reproduces_the_original_order(case: tuple[int, np.ndarray]) -> None:
    count, codes = case
    runs = order_runs(codes)
    partitions = rows_by_partition(codes, count)

    # What checkout does: take the next `rows` rows of partition `partition`, run after run.
    cursors = [0] * count
    rebuilt: list[int] = []
    for run in runs:
        rebuilt.extend(partitions[run.partition][cursors[run.partition] : cursors[run.partition] + run.rows].tolist())
        cursors[run.partition] += run.rows
    assert rebuilt == list(range(len(codes)))
    assert cursors == [len(rows) for rows in partitions]  # every row used exactly once

    assert sum(run.rows for run in runs) == len(codes)
    assert all(run.rows > 0 for run in runs)
    assert all(a.partition != b.partition for a, b in zip(runs, runs[1:]))  # runs are maximal
    for p, rows in enumerate(partitions):
        assert (codes[rows] == p).all() and (np.diff(rows) > 0).all()


@pytest.mark.parametrize(
    ("partitioning", "keys"),
    [("month", ["1969-12", "1970-01", "2024-12", "2025-01"]), ("quarter", ["1969-Q4", "1970-Q1", "2024-Q4", "2025-Q1"]), ("year", ["1969", "1970", "2024", "2025"])],
)
def test_a_repository_names_its_partitions_by_its_partitioning(tmp_path, partitioning: str, keys: list[str]) -> None:
    from conftest import make_chunks, make_embeddings, write_cache
    from egregora_ds import Repository

    repo = Repository.init(tmp_path, cache="cache/rag", partitioning=partitioning, model="m")
    chunks = make_chunks(8)
    for chunk, day in zip(chunks, ["2025-01-01", "1969-12-31", "2024-12-31", "1970-01-01"] * 2):
        chunk["newsletter_date"] = day
    write_cache(repo.cache_path, chunks, make_embeddings(8, 4))
    repo.snapshot("boundaries")
    _, manifest = repo.show()
    assert [p.key for p in manifest.partitions] == keys
    assert [p.rows for p in manifest.partitions] == [2, 2, 2, 2]
    assert len(manifest.row_order) == 8  # every row starts a new run
