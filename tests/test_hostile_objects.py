"""Damaged or hostile manifests, extras and partition objects (issue 9 item 2, issue 10 items 6, 7
and 10): each is refused with one line naming the manifest / object / version (and the remote it
came from) before anything is allocated or written, never an internal error, and `verify` reports
it. A version whose extras would shadow the cache's own keys can never become a cache that
`status` calls clean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import dir_tree, make_backend, repo_tree
from egregora_ds import Repository
from egregora_ds.card import REF_KEY, manifest_key
from egregora_ds.cli import app
from egregora_ds.errors import CorruptObject, EgdsError
from egregora_ds.ids import JSON, PARQUET, short
from egregora_ds.model import MAX_ROWS, decode_manifest, encode_manifest
from egregora_ds.parquet_io import encode_partition, read_partition
from egregora_ds.table import content_hash


def one_line(error: BaseException | str, *needles: str) -> str:
    message = str(error)
    assert message.strip() and "\n" not in message, f"not one line: {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def child(repo: Repository, change: Callable[[dict], Any], *, main: bool = True) -> str:
    """A version 2 whose manifest is the head's with `change` applied to its JSON; main names it."""
    head = repo.head()
    document = json.loads(repo.store.read_manifest_bytes(head))
    document.update(version=2, parent=head, message="hostile")
    change(document)
    manifest_id = repo.store.put_manifest(json.dumps(document, indent=2).encode())
    if main:
        repo.store.write_ref("main", manifest_id)
    return manifest_id


def refused_everywhere(repo: Repository, tmp_path: Path, manifest_id: str, *needles: str) -> None:
    """checkout, diff, log and the CLI refuse with one line naming the manifest; nothing is written;
    verify reports the manifest as a problem."""
    out = tmp_path / "out"
    before = repo_tree(repo.root)
    fresh = Repository.open(repo.root)  # nothing decoded in memory yet
    with pytest.raises(CorruptObject) as raised:
        fresh.checkout("latest", out)
    one_line(raised.value, short(manifest_id), *needles)
    assert not out.exists() and repo_tree(repo.root) == before
    with pytest.raises(CorruptObject):
        Repository.open(repo.root).diff("v1", "latest")
    result = CliRunner().invoke(app, ["-C", str(repo.root), "checkout", "--cache", str(out)])
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.exception)
    assert result.stderr.startswith("egds: error: ") and result.stderr.count("\n") == 1, result.stderr
    report = Repository.open(repo.root).verify()
    assert any(short(manifest_id) in p and all(n in p for n in needles) for p in report.problems), report.problems


# ---- manifests --------------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(document: dict) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return change


def _balanced_rows(rows: int) -> Callable[[dict], None]:
    """Partition 0 and its row-order run claim `rows`, the total follows: every count agrees."""

    def change(document: dict) -> None:
        extra = rows - document["partitions"][0]["rows"]
        document["partitions"][0]["rows"] = rows
        document["rows"] += extra
        run = next(r for r in document["row_order"] if r[0] == 0)
        run[1] += extra

    return change


BAD_MANIFESTS: dict[str, tuple[Callable[[dict], None], str]] = {
    "row-order-names-a-missing-partition": (_set("row_order.0.0", 99), "row_order names partition 99"),
    "row-order-run-of-zero-rows": (lambda d: d["row_order"].append([0, 0]), "run of 0 rows"),
    "row-order-misses-rows": (lambda d: d["row_order"].pop(), "row_order gives partition"),
    "row-order-negative-partition": (_set("row_order.0.0", -1), "row_order names partition -1"),
    "rows-do-not-add-up": (lambda d: d.__setitem__("rows", d["rows"] + 1), "add up"),
    "rows-beyond-any-cache": (_balanced_rows(MAX_ROWS + 1), "rows"),
    "unicode-dtype": (_set("dtype", "<U8"), "dtype '<U8'"),
    "object-dtype": (_set("dtype", "|O"), "dtype '|O'"),
    "native-order-dtype": (_set("dtype", "=f4"), "dtype '=f4'"),
    "dimension-zero": (_set("dim", 0), "dim 0"),
    "dimension-absurd": (_set("dim", 10**9), "dim 1000000000"),
    "partition-without-rows": (_set("partitions.0.rows", 0), "rows"),
    "negative-object-size": (_set("partitions.0.bytes", -5), "bytes"),
    "chunk-ids-reversed": (_set("partitions.0.min_chunk_id", 10**6), "chunk ids"),
    "keys-out-of-order": (lambda d: d["partitions"].reverse(), "sorted"),
    "key-of-another-partitioning": (_set("partitions.0.key", "2024-Q1"), "not a month key"),
    "month-thirteen": (_set("partitions.0.key", "2024-13"), "not a month key"),
    "later-version-without-parent": (_set("parent", None), "parent"),
    "a-time-without-offset": (_set("created_at", "2030-01-01T00:00:00"), "not a UTC time"),
    "a-time-in-another-zone": (_set("created_at", "2030-01-01T00:00:00+05:00"), "not a UTC time"),
}


@pytest.mark.parametrize("kind", list(BAD_MANIFESTS))
def test_a_manifest_that_breaks_a_rule_readers_rely_on_is_refused_in_one_line_and_reported_by_verify(
    filled_repo: Repository, tmp_path: Path, kind: str
) -> None:
    change, needle = BAD_MANIFESTS[kind]
    manifest_id = child(filled_repo, change)
    refused_everywhere(filled_repo, tmp_path, manifest_id, needle)


def test_decode_manifest_names_the_manifest_and_the_caller_s_advice(filled_repo: Repository) -> None:
    data = filled_repo.store.read_manifest_bytes(filled_repo.head()).replace(b'"dtype": "<f4"', b'"dtype": "<U8"')
    with pytest.raises(CorruptObject) as raised:
        decode_manifest(data, "manifest abc from /some/remote", "restore the remote")
    one_line(raised.value, "manifest abc from /some/remote", "dtype '<U8'", "restore the remote")


def test_a_manifest_claiming_ten_billion_rows_is_refused_before_anything_is_allocated(
    filled_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every count in the manifest agrees, so only the objects can tell: their footers are read
    # before the array the manifest declares is allocated.
    manifest_id = child(filled_repo, _balanced_rows(10**10))
    allocations: list[tuple[Any, ...]] = []
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda shape, *a, **k: allocations.append(shape) or real_empty(shape, *a, **k))
    out = tmp_path / "out"
    with pytest.raises(CorruptObject) as raised:
        Repository.open(filled_repo.root).checkout("latest", out)
    one_line(raised.value, "declares", "10000000000", "version 2")
    assert not out.exists()
    assert all(np.prod(shape) < 10**9 for shape in allocations if isinstance(shape, tuple)), allocations


def test_a_remote_manifest_with_a_bad_row_order_is_refused_naming_the_remote(
    filled_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = make_backend("directory", tmp_path, monkeypatch)
    filled_repo.remote_add("origin", backend.url)
    filled_repo.push("origin")
    document = json.loads(filled_repo.store.read_manifest_bytes(filled_repo.head()))
    document.update(version=2, parent=filled_repo.head())
    document["row_order"][0][0] = 42
    data = json.dumps(document, indent=2).encode()
    from egregora_ds.ids import hash_bytes

    bad = hash_bytes(data)
    backend.put_raw(manifest_key(bad), data)
    backend.put_raw(REF_KEY, f"{bad}\n".encode())
    with pytest.raises(CorruptObject) as raised:
        Repository.clone(backend.url, tmp_path / "clone")
    one_line(raised.value, short(bad), backend.url, "row_order names partition 42")
    assert not (tmp_path / "clone").exists()


# ---- extras and index objects ---------------------------------------------------------------------


def _with_object(repo: Repository, field: str, data: bytes) -> str:
    object_id = repo.store.put_object_bytes(data, JSON)
    return child(repo, _set(field, object_id))


def manifest_id_extras(repo: Repository) -> str:
    return repo.manifest(repo.head()).extras


BAD_EXTRAS: dict[str, tuple[bytes, str]] = {
    "a-second-chunks-list": (b'{"metadata":{"chunks":[]},"pickle":{}}', 'key "chunks"'),
    "a-string-replacing-the-array": (b'{"metadata":{},"pickle":{"embeddings":"not an array"}}', 'key "embeddings"'),
    "not-an-object": (b"[1,2,3]", '"metadata" and "pickle"'),
    "an-unknown-part": (b'{"metadata":{},"pickle":{},"other":{}}', '"metadata" and "pickle"'),
    "metadata-that-is-a-list": (b'{"metadata":[],"pickle":{}}', '"metadata" that is not a JSON object'),
    "pickle-that-is-a-string": (b'{"metadata":{},"pickle":"x"}', '"pickle" that is not a JSON object'),
    "nested-deeper-than-a-cache-may": (b'{"metadata":{"x":' + b"[" * 200 + b"]" * 200 + b'},"pickle":{}}', "levels deep"),
    "nested-beyond-the-decoder": (b'{"metadata":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b'},"pickle":{}}', "not JSON"),
    "not-json": (b"{oops", "not JSON"),
}


@pytest.mark.parametrize("kind", list(BAD_EXTRAS))
def test_an_extras_object_no_snapshot_could_write_is_refused_before_the_cache_is_touched(
    filled_repo: Repository, tmp_path: Path, kind: str
) -> None:
    data, needle = BAD_EXTRAS[kind]
    _with_object(filled_repo, "extras", data)
    cache = filled_repo.cache_path
    before = dir_tree(cache)
    with pytest.raises(CorruptObject) as raised:
        Repository.open(filled_repo.root).checkout("latest", force=True)
    one_line(raised.value, short(manifest_id_extras(filled_repo)), "extras object", "version 2", needle, "Restore")
    assert dir_tree(cache) == before


@pytest.mark.parametrize("data", [b"{not json", b"[" * 300 + b"]" * 300], ids=["not-json", "too-deep"])
def test_an_index_object_that_is_not_json_a_cache_may_hold_is_refused(filled_repo: Repository, tmp_path: Path, data: bytes) -> None:
    _with_object(filled_repo, "index", data)
    with pytest.raises(CorruptObject) as raised:
        Repository.open(filled_repo.root).checkout("latest", tmp_path / "out")
    one_line(raised.value, "index object", "version 2", "Restore")
    assert not (tmp_path / "out").exists()


# ---- partition objects ----------------------------------------------------------------------------


def _partition_table(repo: Repository, index: int = 0) -> tuple[pa.Table, Any]:
    _, manifest = repo.show()
    entry = manifest.partitions[index]
    return read_partition(repo.store.read_object(entry.object, PARQUET), entry, manifest), entry


def _swap_object(repo: Repository, table: pa.Table, *, keep_rows: bool = True, index: int = 0) -> tuple[str, str]:
    """Store `table` as a Parquet object and make a version 2 whose partition `index` names it
    (content hash and size of the new object; rows kept from the real entry unless told)."""
    _, entry = _partition_table(repo, index)
    data = encode_partition(table, entry.key, content_hash(table)).to_pybytes()
    object_id = repo.store.put_object_bytes(data, PARQUET)

    def change(document: dict) -> None:
        part = document["partitions"][index]
        part.update(object=object_id, bytes=len(data), content_hash=content_hash(table))
        if not keep_rows:
            _balanced_rows(table.num_rows)(document)

    return child(repo, change), object_id


def _replace_column(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def _vectors(rows: int, dim: int, dtype: Any) -> pa.Array:
    values = np.zeros(rows * dim, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(values), dim)


BAD_OBJECTS: dict[str, tuple[Callable[[pa.Table], pa.Table], str]] = {
    "no-embedding-column": (lambda t: t.drop_columns(["embedding"]), "has no embedding column"),
    "wrong-dimension": (lambda t: _replace_column(t, "embedding", _vectors(t.num_rows, 8, np.float32)), "embedding column of type"),
    "wrong-float-width": (lambda t: _replace_column(t, "embedding", _vectors(t.num_rows, 16, np.float64)), "embedding column of type"),
    "embedding-as-strings": (lambda t: _replace_column(t, "embedding", pa.array(["x"] * t.num_rows)), "embedding column of type"),
    "text-as-numbers": (lambda t: _replace_column(t, "text", pa.array(range(t.num_rows), pa.int64())), "text column of type"),
    "an-unknown-column": (lambda t: t.append_column("surprise", pa.array([1] * t.num_rows)), "not those of a partition"),
    "columns-out-of-order": (lambda t: t.select(["newsletter_date", "chunk_id", *t.column_names[2:]]), "not those of a partition"),
    "more-rows-than-the-manifest": (lambda t: pa.concat_tables([t, t]), "declares 20 rows, the manifest 10"),
    # Content a snapshot never writes and checkout would turn into something else without a word:
    # a null vector shifted every later row and left uninitialised memory in the array.
    "a-null-vector": (lambda t: _replace_column(t, "embedding", _null_first(t.column("embedding").combine_chunks())), "nulls in column embedding"),
    "a-null-inside-a-vector": (lambda t: _replace_column(t, "embedding", _null_value(t.column("embedding").combine_chunks())), "nulls inside embedding"),
    "a-null-chunk-id": (lambda t: _replace_column(t, "chunk_id", pa.array([None] + list(range(1, t.num_rows)), pa.int64())), "nulls in column chunk_id"),
    "text-that-is-not-utf8": (lambda t: _replace_column(t, "text", _invalid_utf8(t.num_rows)), "not UTF-8"),
    "a-date-past-9999": (lambda t: _replace_column(t, "newsletter_date", pa.array([3_000_000] * t.num_rows, pa.int32()).cast(pa.date32())), "dates outside"),
}


def _null_first(vectors: pa.FixedSizeListArray) -> pa.Array:
    mask = pa.array([True] + [False] * (len(vectors) - 1))
    return pa.FixedSizeListArray.from_arrays(vectors.flatten(), vectors.type.list_size, mask=mask)


def _null_value(vectors: pa.FixedSizeListArray) -> pa.Array:
    values = vectors.flatten().to_pylist()
    values[0] = None
    return pa.FixedSizeListArray.from_arrays(pa.array(values, vectors.type.value_type), vectors.type.list_size)


def _invalid_utf8(rows: int) -> pa.Array:
    offsets = np.arange(rows + 1, dtype=np.int32) * 2
    return pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(b"\xff\xfe" * rows)])


@pytest.mark.parametrize("kind", list(BAD_OBJECTS))
def test_a_partition_object_that_disagrees_with_its_manifest_is_refused_by_checkout_diff_and_deep_verify(
    filled_repo: Repository, tmp_path: Path, kind: str
) -> None:
    damage, needle = BAD_OBJECTS[kind]
    table, entry = _partition_table(filled_repo)
    manifest_id, object_id = _swap_object(filled_repo, damage(table))
    out = tmp_path / "out"
    with pytest.raises(CorruptObject) as raised:
        Repository.open(filled_repo.root).checkout("latest", out)
    one_line(raised.value, short(object_id), f"partition {entry.key}", "version 2", needle)
    assert not out.exists()
    with pytest.raises(CorruptObject) as raised:
        Repository.open(filled_repo.root).diff("v1", "latest")
    one_line(raised.value, short(object_id), needle)
    report = Repository.open(filled_repo.root).verify(deep=True)
    assert any(short(object_id) in p and needle in p for p in report.problems), report.problems


def test_a_decompression_bomb_is_refused_from_its_footer_without_decoding_it(
    filled_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 400,000 rows of zeros compress to almost nothing; the manifest says the partition has 10.
    rows, dim = 400_000, 16
    table, entry = _partition_table(filled_repo)
    zeros = pa.table(
        {
            "chunk_id": pa.array(np.zeros(rows, dtype=np.int64)),
            "newsletter_date": pa.array(np.zeros(rows, dtype=np.int32)).cast(pa.int32()).cast(pa.date32()),
            "extra": pa.nulls(rows, pa.string()),
            "embedding": _vectors(rows, dim, np.float32),
        }
    )
    manifest_id, object_id = _swap_object(filled_repo, zeros)
    assert filled_repo.store.object_path(object_id, PARQUET).stat().st_size < rows  # under a byte a row
    decoded: list[int] = []
    real_read = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, *a, **k: decoded.append(self.metadata.num_rows) or real_read(self, *a, **k))
    with pytest.raises(CorruptObject) as raised:
        Repository.open(filled_repo.root).checkout("latest", tmp_path / "out")
    one_line(raised.value, short(object_id), f"declares {rows} rows, the manifest {entry.rows}")
    assert rows not in decoded, "the bomb was decoded before its row count was checked"


def test_a_footer_declaring_more_text_than_the_object_could_hold_is_refused(filled_repo: Repository, tmp_path: Path) -> None:
    table, entry = _partition_table(filled_repo)
    # Ten rows of 8 MiB of one repeated letter: 80 MiB of text from an object of a few KiB.
    bomb = _replace_column(table, "text", pa.array(["a" * (8 << 20)] * table.num_rows))
    manifest_id, object_id = _swap_object(filled_repo, bomb)
    with pytest.raises(CorruptObject) as raised:
        Repository.open(filled_repo.root).checkout("latest", tmp_path / "out")
    one_line(raised.value, short(object_id), "uncompressed bytes of text")


def test_a_partition_of_a_version_written_by_egds_passes_the_footer_checks_even_when_it_compresses_to_almost_nothing(
    repo: Repository, tmp_path: Path
) -> None:
    from conftest import make_chunks, write_cache

    # All-zero vectors and one repeated text: the most compressible cache a pipeline can write.
    chunks = make_chunks(5000, months=1)
    for chunk in chunks:
        chunk["text"] = "same text " * 20
    write_cache(repo.cache_path, chunks, np.zeros((5000, 64), np.float32))
    repo.snapshot("zeros")
    repo.checkout("latest", tmp_path / "out")
    assert repo.verify(deep=True).ok


def test_encode_manifest_output_of_every_snapshot_decodes(filled_repo: Repository) -> None:
    manifest_id, manifest = filled_repo.show()
    assert decode_manifest(encode_manifest(manifest), "m") == manifest
    assert msgspec.json.decode(filled_repo.store.read_manifest_bytes(manifest_id))["dtype"] == "<f4"


def test_a_hostile_version_never_turns_into_a_cache_that_status_calls_clean(filled_repo: Repository, tmp_path: Path) -> None:
    # The reported attack: extras with a second `chunks` list, checked out, then `status` clean.
    _with_object(filled_repo, "extras", b'{"metadata":{"chunks":[{"chunk_id":0,"newsletter_date":"2024-01-01"}]},"pickle":{}}')
    out = tmp_path / "out"
    with pytest.raises(EgdsError):
        Repository.open(filled_repo.root).checkout("latest", out)
    assert not out.exists()
