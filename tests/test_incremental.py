"""A snapshot writes only the partitions whose content is new; content, not bytes, decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import load_cache, make_chunks, make_embeddings, object_files, parquet_objects, write_cache
from egregora_ds import Repository
from egregora_ds.cache import read_cache
from egregora_ds.table import content_hash, partition_cache

INDEX = {"newsletters": 6}


def _snapshot(repo: Repository, chunks: list[dict[str, Any]], embeddings: np.ndarray, message: str = "", **kw: Any):
    write_cache(repo.cache_path, chunks, embeddings, index=kw.pop("index", INDEX), **kw)
    return repo.snapshot(message)


def _assert_one_new_object(repo: Repository, change) -> None:
    """Apply `change` to the 60-chunk cache of `filled_repo`, snapshot, and count what was written."""
    chunks, embeddings = make_chunks(60), make_embeddings(60)
    chunks, embeddings = change(chunks, embeddings)
    before = object_files(repo)
    result = _snapshot(repo, chunks, embeddings, "change")
    new = object_files(repo) - before
    assert result.created and result.version == 2
    assert result.partitions.written == 1
    assert len(new) == 1 and next(iter(new)).endswith(".parquet")
    assert result.bytes_written == (repo.store.objects_dir / next(iter(new))[:2] / next(iter(new))).stat().st_size


def test_editing_one_old_chunks_text_writes_exactly_one_object(filled_repo: Repository) -> None:
    def change(chunks, embeddings):
        chunks[3]["text"] = "corrigido"  # January, the oldest month
        return chunks, embeddings

    _assert_one_new_object(filled_repo, change)
    assert filled_repo.diff("v1", "v2").partitions.changed == ["2024-01"]


def test_changing_one_vector_writes_exactly_one_object(filled_repo: Repository) -> None:
    def change(chunks, embeddings):
        embeddings[25, 7] = np.nextafter(embeddings[25, 7], np.float32(np.inf))  # one ulp
        return chunks, embeddings

    _assert_one_new_object(filled_repo, change)
    assert filled_repo.diff("v1", "v2").partitions.changed == ["2024-03"]


def test_deleting_a_chunk_writes_exactly_one_object(filled_repo: Repository) -> None:
    def change(chunks, embeddings):
        del chunks[44]
        return chunks, np.delete(embeddings, 44, axis=0)

    _assert_one_new_object(filled_repo, change)
    assert filled_repo.show()[1].rows == 59


def test_adding_a_new_month_writes_exactly_one_object(filled_repo: Repository) -> None:
    def change(chunks, embeddings):
        new = make_chunks(5, months=1, start_year=2024)
        for i, chunk in enumerate(new):
            chunk["chunk_id"] = 60 + i
            chunk["newsletter_date"] = f"2024-07-{i + 1:02d}"
        return chunks + new, np.concatenate([embeddings, make_embeddings(5, seed=9)])

    _assert_one_new_object(filled_repo, change)
    assert [p.key for p in filled_repo.show()[1].partitions][-1] == "2024-07"
    assert filled_repo.diff("v1", "v2").partitions.added == ["2024-07"]


def test_a_chunk_with_an_odd_field_rewrites_only_its_own_partition(filled_repo: Repository) -> None:
    # The typed-column decision is per partition, so one chunk without `text` and with a string
    # char_count moves those fields to `extra` in its own month only.
    def change(chunks, embeddings):
        del chunks[12]["text"]
        chunks[12]["char_count"] = "many"
        return chunks, embeddings

    _assert_one_new_object(filled_repo, change)
    _, v2 = filled_repo.show()
    _, v1 = filled_repo.show("v1")
    changed = [a.key for a, b in zip(v1.partitions, v2.partitions) if a.object != b.object]
    assert changed == ["2024-02"]


def test_a_snapshot_of_an_unchanged_cache_writes_nothing_and_keeps_the_version(filled_repo: Repository) -> None:
    head = filled_repo.head()
    before = object_files(filled_repo)
    manifests = filled_repo.store.manifest_ids()
    result = filled_repo.snapshot("again")
    assert not result.created and result.id == head and result.version == 1
    assert result.partitions.written == 0 and result.bytes_written == 0
    assert object_files(filled_repo) == before and filled_repo.store.manifest_ids() == manifests


def test_a_rewritten_but_identical_cache_is_a_no_op_even_without_the_stamp(filled_repo: Repository) -> None:
    # Different bytes (protocol 5 pickle, indented JSON), same content: still nothing to record.
    cache = filled_repo.cache_path
    (filled_repo.store.root / "state.json").unlink()
    import pickle

    with open(cache / "embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": make_embeddings(60)}, f, protocol=5)
    (cache / "metadata.json").write_text(json.dumps({"chunks": make_chunks(60)}, indent=4), encoding="utf-8")
    before = object_files(filled_repo)
    result = filled_repo.snapshot("same content")
    assert not result.created and result.version == 1 and result.partitions.written == 0
    assert object_files(filled_repo) == before


def test_an_edit_that_is_undone_reuses_the_original_object(filled_repo: Repository) -> None:
    _, v1 = filled_repo.show("v1")
    chunks = make_chunks(60)
    chunks[3]["text"] = "temporary"
    assert _snapshot(filled_repo, chunks, make_embeddings(60), "edit").partitions.written == 1
    before = object_files(filled_repo)

    result = _snapshot(filled_repo, make_chunks(60), make_embeddings(60), "undo")
    assert result.created and result.version == 3  # a new version (it differs from v2)...
    assert result.partitions.written == 0 and result.bytes_written == 0  # ...but no new data
    assert object_files(filled_repo) == before
    _, v3 = filled_repo.show()
    assert v3.partitions == v1.partitions
    assert filled_repo.status().clean


def test_reordering_whole_months_in_the_cache_records_a_version_without_new_objects(filled_repo: Repository) -> None:
    chunks, embeddings = make_chunks(60), make_embeddings(60)
    order = list(range(50, 60)) + list(range(50))  # June first: every partition keeps its rows
    before = object_files(filled_repo)
    result = _snapshot(filled_repo, [chunks[i] for i in order], embeddings[order], "june first")
    assert result.created and result.partitions.written == 0
    assert object_files(filled_repo) == before
    assert filled_repo.show()[1].row_order != filled_repo.show("v1")[1].row_order


def test_changing_only_index_json_writes_one_json_object_and_no_partition(filled_repo: Repository) -> None:
    before = object_files(filled_repo)
    result = _snapshot(filled_repo, make_chunks(60), make_embeddings(60), index={"newsletters": 7})
    new = object_files(filled_repo) - before
    assert result.created and result.partitions.written == 0
    assert len(new) == 1 and next(iter(new)).endswith(".json")


# ---- identical content, identical objects -----------------------------------------------------------

_SNAPSHOT_IN_A_FRESH_PROCESS = """
import json, sys
from egregora_ds import Repository
repo = Repository.init(sys.argv[1], cache=sys.argv[2], partitioning="month", model="m")
result = repo.snapshot("same")
_, manifest = repo.show()
print(json.dumps({
    "written": result.partitions.written,
    "partitions": [[p.key, p.object, p.content_hash, p.rows, p.bytes] for p in manifest.partitions],
    "row_order": [[r.partition, r.rows] for r in manifest.row_order],
    "extras": manifest.extras, "index": manifest.index,
}))
"""


def test_two_repositories_in_two_processes_store_the_same_cache_as_the_same_objects(tmp_path: Path) -> None:
    chunks = make_chunks(90, months=9)
    chunks[5]["newsletter_date"] += "T08:00:00"  # an extra column in one partition
    del chunks[70]["section_title"]
    chunks = chunks[::2] + chunks[1::2]  # interleaved months
    embeddings = make_embeddings(90, dim=8)
    cache = write_cache(tmp_path / "cache", chunks, embeddings, metadata_extra={"v": 2}, index={"n": 9})
    runs = []
    for name, seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        runs.append(
            subprocess.Popen(
                [sys.executable, "-c", _SNAPSHOT_IN_A_FRESH_PROCESS, str(tmp_path / name), str(cache)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
            )
        )
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        outputs.append(json.loads(out))
    a, b = outputs
    assert a["written"] == 9 and len(a["partitions"]) == 9
    assert a == b
    files_a = object_files(Repository.open(tmp_path / "a"))
    assert files_a == object_files(Repository.open(tmp_path / "b"))


# ---- the content hash ------------------------------------------------------------------------------


@pytest.fixture
def partition(tmp_path: Path) -> pa.Table:
    """One month's table with every column kind: typed strings and ints, nulls, extra JSON, vectors."""
    chunks = make_chunks(12, months=1)
    chunks[2]["newsletter_date"] = "2024-01-03T09:30:00"
    chunks[4]["section_title"] = None
    chunks[7]["tags"] = ["a", "b"]
    write_cache(tmp_path / "c", chunks, make_embeddings(12, dim=4))
    (table,) = [p.table for p in partition_cache(read_cache(tmp_path / "c"), "month").partitions]
    assert {"extra", "section_title", "text", "embedding"} <= set(table.column_names)
    assert table.column("extra").null_count not in (0, table.num_rows)
    return table


WRITER_VARIANTS = [
    dict(compression="none"),
    dict(compression="snappy", row_group_size=1),
    dict(compression="gzip", row_group_size=5, use_dictionary=False),
    dict(compression="zstd", compression_level=19, data_page_size=64, write_statistics=False),
    dict(compression="zstd", use_byte_stream_split=["embedding.list.element"], use_dictionary=["text", "extra"]),
    dict(compression="lz4", version="2.4", data_page_version="2.0"),
]


@pytest.mark.parametrize("options", WRITER_VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_the_content_hash_does_not_depend_on_parquet_writer_settings(partition: pa.Table, tmp_path: Path, options) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(partition, path, **options)
    read_back = pq.read_table(path)
    if options.get("row_group_size") == 1:
        assert read_back.column("chunk_id").num_chunks == partition.num_rows  # many chunks, same content
    assert content_hash(read_back) == content_hash(partition)


def test_the_content_hash_does_not_depend_on_chunking_offsets_or_string_width(partition: pa.Table) -> None:
    expected = content_hash(partition)
    chunked = pa.concat_tables([partition.slice(0, 5), partition.slice(5, 1), partition.slice(6)])
    assert content_hash(chunked) == expected
    padded = pa.concat_tables([partition.slice(0, 3), partition, partition.slice(0, 2)])
    assert content_hash(padded.slice(3, partition.num_rows)) == expected  # buffers with an offset
    wide = partition.cast(
        pa.schema([f.with_type(pa.large_string()) if f.type == pa.string() else f for f in partition.schema])
    )
    assert content_hash(wide) == expected
    encoded = partition.set_column(
        partition.column_names.index("section_title"), "section_title",
        partition.column("section_title").dictionary_encode(),
    )
    assert content_hash(encoded) == expected


def _cell_changes(table: pa.Table):
    """(description, table) for a change of one value in every cell of every column."""
    for c, name in enumerate(table.column_names):
        values = table.column(name).to_pylist()
        for row in range(table.num_rows):
            old = values[row]
            if isinstance(old, list):  # a vector: flip the lowest bit of one element
                vector = np.array(old, dtype=np.float32)
                vector.view(np.uint32)[row % len(vector)] ^= 1
                new: Any = vector.tolist()
            elif isinstance(old, int) and not isinstance(old, bool):
                new = old + 1
            elif isinstance(old, str):
                new = old[:-1] if old else "x"
            elif old is None:
                new = "" if pa.types.is_string(table.schema.field(name).type) else 0
            else:  # a date
                new = old.replace(day=old.day % 28 + 1)
            changed = list(values)
            changed[row] = new
            yield f"{name}[{row}]: {old!r} -> {new!r}", table.set_column(c, name, pa.array(changed, table.schema.field(name).type))


def test_the_content_hash_changes_when_any_single_value_changes(partition: pa.Table) -> None:
    base = content_hash(partition)
    seen = {base}
    for description, changed in _cell_changes(partition):
        digest = content_hash(changed)
        assert digest != base, description
        seen.add(digest)
    assert len(seen) == 1 + partition.num_rows * partition.num_columns


def test_the_content_hash_tells_null_from_empty_and_zero_and_minus_zero_from_zero() -> None:
    def one(column: pa.Array) -> str:
        return content_hash(pa.table({"x": column}))

    assert one(pa.array([None, "a"], pa.string())) != one(pa.array(["", "a"], pa.string()))
    assert one(pa.array([None, 1], pa.int64())) != one(pa.array([0, 1], pa.int64()))
    assert one(pa.array(["ab", ""])) != one(pa.array(["a", "b"]))  # offsets are hashed, not only the bytes
    zero = pa.FixedSizeListArray.from_arrays(pa.array([0.0, 1.0], pa.float32()), 2)
    minus_zero = pa.FixedSizeListArray.from_arrays(pa.array([-0.0, 1.0], pa.float32()), 2)
    assert one(zero) != one(minus_zero)
    assert one(pa.array([1], pa.int64())) != one(pa.array([1], pa.int32()))


def test_the_content_hash_changes_with_a_column_name_or_the_row_order(partition: pa.Table) -> None:
    base = content_hash(partition)
    renamed = partition.rename_columns([("text_" if n == "text" else n) for n in partition.column_names])
    assert content_hash(renamed) != base
    swapped = partition.take(pa.array([1, 0, *range(2, partition.num_rows)]))
    assert content_hash(swapped) != base
    reordered_columns = partition.select([1, 0, *range(2, partition.num_columns)])
    assert content_hash(reordered_columns) != base
    assert content_hash(partition.slice(0, partition.num_rows - 1)) != base


def test_the_partition_object_round_trips_its_content_hash(filled_repo: Repository) -> None:
    from egregora_ds.parquet_io import read_partition

    _, manifest = filled_repo.show()
    for entry in manifest.partitions:
        data = filled_repo.store.read_object(entry.object, ".parquet")
        metadata = pq.read_schema(pa.BufferReader(data)).metadata
        assert metadata[b"egds.content_hash"].decode() == entry.content_hash
        assert metadata[b"egds.partition"].decode() == entry.key
        assert content_hash(read_partition(data, entry, manifest)) == entry.content_hash
    assert len(parquet_objects(filled_repo)) == len(manifest.partitions) == 6
    assert load_cache(filled_repo.cache_path)[2] == INDEX


def test_a_partition_whose_object_is_missing_here_is_rewritten_only_when_a_new_version_is_recorded(
    filled_repo: Repository,
) -> None:
    repo = filled_repo
    v1 = repo.show()[1]
    march = next(p for p in v1.partitions if p.key == "2024-03")
    repo.store.object_path(march.object, ".parquet").unlink()  # e.g. a clone that never fetched it
    (repo.store.root / "state.json").unlink()  # no stamp: the cache is parsed and compared
    before = object_files(repo)

    unchanged = repo.snapshot("nothing new")
    assert not unchanged.created and object_files(repo) == before

    chunks, embeddings = make_chunks(60), make_embeddings(60)
    chunks[3]["text"] = "corrigido"  # January
    result = _snapshot(repo, chunks, embeddings, "change")
    # The new January object, and March's again: v2 must not name an object this store lacks.
    assert result.created and result.partitions.written == 2
    v2 = repo.show()[1]
    assert all(repo.store.has_object(p.object, ".parquet") for p in v2.partitions)
    assert next(p for p in v2.partitions if p.key == "2024-03").content_hash == march.content_hash
    assert repo.verify().ok
