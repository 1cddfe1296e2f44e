"""`diff` (version vs version, down to chunk ids) and `status` (the cache vs latest)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.errors import CacheError
from egregora_ds.results import DiffChunks, DiffIds, PartitionStatus

INDEX = {"newsletters": 6}
MONTHS = ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05", "2024-06"]  # make_chunks(60): ids 10k..10k+9


def snap(repo: Repository, chunks: list[dict[str, Any]], embeddings: np.ndarray, **kw: Any):
    write_cache(repo.cache_path, chunks, embeddings, index=kw.pop("index", INDEX), **kw)
    return repo.snapshot(kw.pop("message", ""), allow_nonfinite=True)


def base() -> tuple[list[dict[str, Any]], np.ndarray]:
    return make_chunks(60), make_embeddings(60)


# ---- diff ------------------------------------------------------------------------------------------


def test_diff_counts_added_removed_text_changed_and_embedding_changed_chunks(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    chunks[3]["text"] = "novo texto"  # text only
    embeddings[20, 0] += 1  # vector only
    chunks[40]["text"] += "!"  # both
    embeddings[40] *= -1
    chunks[41]["section_title"] = "outra"  # neither text nor vector: a metadata change
    keep = [i for i in range(60) if i != 50]  # remove chunk 50
    chunks, embeddings = [chunks[i] for i in keep], embeddings[keep]
    new = make_chunks(3, months=1, start_year=2024)
    for i, chunk in enumerate(new):
        chunk.update(chunk_id=100 + i, newsletter_date=f"2024-07-0{i + 1}")
    snap(filled_repo, chunks + new, np.concatenate([embeddings, make_embeddings(3, seed=5)]))

    result = filled_repo.diff("v1", "v2")
    assert result.chunks == DiffChunks(
        added=3, removed=1, text_changed=2, embedding_changed=2, changed=4, moved=0,
        fields={"text": 2, "embedding": 2, "section_title": 1},
    )
    assert result.ids is None
    assert result.partitions.added == ["2024-07"]
    assert result.partitions.removed == []
    assert result.partitions.changed == ["2024-01", "2024-03", "2024-05", "2024-06"]

    detailed = filled_repo.diff("v1", "latest", ids=True)
    assert detailed.ids == DiffIds(
        added=[100, 101, 102], removed=[50], text_changed=[3, 40], embedding_changed=[20, 40], changed=[3, 20, 40, 41],
        moved=[], fields={"text": [3, 40], "embedding": [20, 40], "section_title": [41]},
    )
    assert detailed.a == filled_repo.show("v1")[0] and detailed.b == filled_repo.head()


def test_diff_backwards_swaps_added_and_removed(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    snap(filled_repo, chunks[:-5], embeddings[:-5])
    forward = filled_repo.diff("v1", "v2", ids=True)
    backward = filled_repo.diff("v2", "v1", ids=True)
    assert forward.ids.removed == backward.ids.added == [55, 56, 57, 58, 59]
    assert forward.chunks.added == backward.chunks.removed == 0


def test_diff_of_a_version_with_itself_is_empty(filled_repo: Repository) -> None:
    result = filled_repo.diff("v1", "latest", ids=True)
    assert result.chunks == DiffChunks(0, 0, 0, 0)
    assert result.ids == DiffIds([], [], [], [])
    assert (result.partitions.added, result.partitions.removed, result.partitions.changed) == ([], [], [])


def test_removing_a_whole_month_removes_its_partition_and_its_chunks(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    snap(filled_repo, chunks[:20] + chunks[30:], np.concatenate([embeddings[:20], embeddings[30:]]))
    result = filled_repo.diff("v1", "v2", ids=True)
    assert result.partitions.removed == ["2024-03"] and result.partitions.changed == []
    assert result.ids.removed == list(range(20, 30))
    assert result.chunks == DiffChunks(added=0, removed=10, text_changed=0, embedding_changed=0, changed=0)


def test_a_chunk_that_moved_to_another_month_is_neither_added_nor_removed(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    chunks[5]["newsletter_date"] = "2024-02-15"  # January -> February, same text and vector
    snap(filled_repo, chunks, embeddings)
    result = filled_repo.diff("v1", "v2", ids=True)
    assert result.chunks == DiffChunks(0, 0, 0, 0, changed=1, moved=1, fields={"newsletter_date": 1})
    assert result.ids.fields == {"newsletter_date": [5]} and result.ids.moved == [5]
    assert result.partitions.changed == ["2024-01", "2024-02"]


def test_a_chunk_that_moved_and_changed_text_counts_once_as_text_changed(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    chunks[5]["newsletter_date"] = "2025-01-01"  # into a month that did not exist
    chunks[5]["text"] = "moved and edited"
    snap(filled_repo, chunks, embeddings)
    result = filled_repo.diff("v1", "v2", ids=True)
    assert result.ids == DiffIds(
        added=[], removed=[], text_changed=[5], embedding_changed=[], changed=[5], moved=[5],
        fields={"text": [5], "newsletter_date": [5]},
    )
    assert result.partitions.changed == ["2024-01"] and result.partitions.added == ["2025-01"]


def test_a_partition_that_moves_text_into_extra_does_not_change_its_other_chunks_text(filled_repo: Repository) -> None:
    # Chunk 12 loses its text: February keeps `text` in the extra JSON from now on. Only chunk 12's
    # text changed; the nine others read the same, whichever column holds them.
    chunks, embeddings = base()
    del chunks[12]["text"]
    snap(filled_repo, chunks, embeddings)
    assert filled_repo.diff("v1", "v2", ids=True).ids.text_changed == [12]
    assert filled_repo.diff("v2", "v1", ids=True).ids.text_changed == [12]

    chunks[12]["text"] = None  # missing -> explicit null is a change too
    snap(filled_repo, chunks, embeddings)
    assert filled_repo.diff("v2", "v3", ids=True).ids.text_changed == [12]
    assert filled_repo.diff("v1", "v3", ids=True).ids.text_changed == [12]


def test_a_non_string_text_is_compared_by_value(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    chunks[12]["text"] = 5
    snap(filled_repo, chunks, embeddings)
    chunks[13]["extra_field"] = "unrelated"  # same month, text unchanged everywhere
    snap(filled_repo, chunks, embeddings)
    chunks[12]["text"] = "5"  # the number 5 and the string "5" differ
    snap(filled_repo, chunks, embeddings)
    assert filled_repo.diff("v1", "v2", ids=True).ids.text_changed == [12]
    assert filled_repo.diff("v2", "v3", ids=True).ids.text_changed == []
    assert filled_repo.diff("v3", "v4", ids=True).ids.text_changed == [12]


def test_vectors_compare_by_bits_so_nan_is_unchanged_and_minus_zero_is_a_change(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    embeddings[0, 0] = np.nan
    snap(filled_repo, chunks, embeddings)
    chunks[1]["text"] = "edit next to the NaN"
    snap(filled_repo, chunks, embeddings)
    assert filled_repo.diff("v2", "v3", ids=True).ids == DiffIds([], [], [1], [], changed=[1], fields={"text": [1]})
    embeddings[2, 0] = 0.0
    snap(filled_repo, chunks, embeddings)
    embeddings[2, 0] = -0.0
    snap(filled_repo, chunks, embeddings)
    assert filled_repo.diff("v4", "v5", ids=True).ids.embedding_changed == [2]


def test_a_new_dtype_changes_every_vector(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    snap(filled_repo, chunks, embeddings.astype(np.float64))
    result = filled_repo.diff("v1", "v2")
    assert result.chunks == DiffChunks(
        added=0, removed=0, text_changed=0, embedding_changed=60, changed=60, fields={"embedding": 60}
    )
    assert result.partitions.changed == MONTHS


# ---- status ----------------------------------------------------------------------------------------


def test_status_after_a_snapshot_is_clean(filled_repo: Repository) -> None:
    status = filled_repo.status()
    assert status.clean and status.version == 1 and status.id == filled_repo.head() and status.rows == 60
    assert status.partitions == PartitionStatus(unchanged=MONTHS, changed=[], added=[], removed=[])
    assert not (status.index_changed or status.extras_changed or status.order_changed or status.model_changed)


def test_status_is_clean_without_the_stamp_too(filled_repo: Repository) -> None:
    (filled_repo.store.root / "state.json").unlink()
    status = filled_repo.status()
    assert status.clean and status.partitions.unchanged == MONTHS


def test_status_reports_changed_added_and_removed_partitions(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    chunks[33]["text"] = "edited"  # April changes
    keep = list(range(10, 60))  # January goes
    extra = {**make_chunks(1)[0], "chunk_id": 99, "newsletter_date": "2024-08-01"}  # August comes
    write_cache(
        filled_repo.cache_path, [chunks[i] for i in keep] + [extra],
        np.concatenate([embeddings[keep], make_embeddings(1, seed=3)]), index=INDEX,
    )
    status = filled_repo.status()
    assert not status.clean and status.version == 1 and status.rows == 51
    assert status.partitions == PartitionStatus(
        unchanged=["2024-02", "2024-03", "2024-05", "2024-06"], changed=["2024-04"], added=["2024-08"], removed=["2024-01"]
    )
    filled_repo.snapshot("v2")
    after = filled_repo.status()
    assert after.clean and after.version == 2


def test_status_reports_a_changed_index_alone(filled_repo: Repository) -> None:
    write_cache(filled_repo.cache_path, *base(), index={"newsletters": 7})
    status = filled_repo.status()
    assert not status.clean and status.index_changed
    assert status.partitions.unchanged == MONTHS
    assert not (status.extras_changed or status.order_changed or status.model_changed)


def test_status_reports_a_removed_index(filled_repo: Repository) -> None:
    write_cache(filled_repo.cache_path, *base(), index=None)
    status = filled_repo.status()
    assert not status.clean and status.index_changed


def test_status_reports_changed_extras(filled_repo: Repository) -> None:
    write_cache(filled_repo.cache_path, *base(), index=INDEX, pickle_extra={"model": "x"})
    status = filled_repo.status()
    assert not status.clean and status.extras_changed and not status.index_changed
    assert status.partitions.unchanged == MONTHS


def test_status_reports_a_new_row_order(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    order = list(range(30, 60)) + list(range(30))
    write_cache(filled_repo.cache_path, [chunks[i] for i in order], embeddings[order], index=INDEX)
    status = filled_repo.status()
    assert not status.clean and status.order_changed and status.partitions.unchanged == MONTHS


def test_status_reports_a_new_dtype_as_a_model_change(filled_repo: Repository) -> None:
    chunks, embeddings = base()
    write_cache(filled_repo.cache_path, chunks, embeddings.astype(np.float16), index=INDEX)
    status = filled_repo.status()
    assert not status.clean and status.model_changed and status.partitions.changed == MONTHS


def test_status_of_a_repository_with_no_versions_lists_every_partition_as_added(repo: Repository) -> None:
    write_cache(repo.cache_path, make_chunks(30, months=3), make_embeddings(30), index=INDEX)
    status = repo.status()
    assert status.version is None and status.id is None and not status.clean and status.rows == 30
    assert status.partitions == PartitionStatus(unchanged=[], changed=[], added=MONTHS[:3], removed=[])
    assert status.index_changed and not status.extras_changed and not status.order_changed


def test_status_of_a_repository_with_no_versions_and_no_cache_says_where_it_looked(repo: Repository) -> None:
    with pytest.raises(CacheError, match="does not exist"):
        repo.status()


def test_status_of_another_cache_directory(filled_repo: Repository, tmp_path) -> None:
    other = tmp_path / "other"
    filled_repo.checkout("v1", cache=other)
    assert filled_repo.status(cache=other).clean
    write_cache(other, make_chunks(59), make_embeddings(59), index=INDEX)
    assert filled_repo.status(cache=other).partitions.changed == ["2024-06"]
    assert filled_repo.status().clean


def test_a_new_model_with_another_dimension_changes_every_vector(filled_repo: Repository) -> None:
    chunks, _ = base()
    write_cache(filled_repo.cache_path, chunks, make_embeddings(60, dim=8), index=INDEX)
    assert filled_repo.status().model_changed
    filled_repo.snapshot("new model", new_model=True, model="other-model")
    result = filled_repo.diff("v1", "v2")
    assert result.chunks == DiffChunks(
        added=0, removed=0, text_changed=0, embedding_changed=60, changed=60, fields={"embedding": 60}
    )
