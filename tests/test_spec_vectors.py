"""SPEC.md Appendix A, the worked test vectors: every value printed there is recomputed here from the
fixture files in tests/fixtures/vectors/, so the spec, the fixtures and the code cannot drift.

Two small re-implementations written from the spec's text alone (§4's content hash and §11.3's
metadata.json) check that the text is complete enough for a second implementation to agree with egds
byte for byte. The Parquet objects were written by pyarrow 26.0.1 with SPEC.md §5.2's settings; their
bytes (and so their ids) are writer-dependent, everything else is not.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
from datetime import date, datetime, timezone
from pathlib import Path

import blake3
import numpy as np
import pyarrow as pa
import pytest

from egregora_ds import Repository
from egregora_ds.cache import read_cache
from egregora_ds.model import Manifest, OrderRun, PartitionEntry, encode_manifest
from egregora_ds.snapshot import encode_extras
from egregora_ds.table import content_hash, lay_out_cache

ROOT = Path(__file__).parent.parent
SPEC = (ROOT / "SPEC.md").read_text(encoding="utf-8")
VECTORS = Path(__file__).parent / "fixtures" / "vectors"
ARRAY = np.array([[0.5, -1.0], [0.25, 2.0], [-0.0, 1.5]], dtype="<f4")
PICKLE_EXTRAS = {"normalized": False}
KEYS = ("2025-01", "2025-02")
TYPED = ("newsletter_path", "section_title", "text", "char_count", "chunk_index_in_newsletter")


def _read_parquet(data: bytes):
    """A partition object's table, read as any Parquet reader would (the vectors are about the bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(data)).read()


def spec_values() -> dict[str, str]:
    block = re.search(r"<!-- vectors:start -->(.*?)<!-- vectors:end -->", SPEC, re.S)
    assert block, "SPEC.md has no vectors table"
    rows = [line.split(" | ", 1) for line in block.group(1).strip().splitlines()[2:]]
    return {name.strip("| "): value.strip().removesuffix("|").strip().strip("`") for name, value in rows}


def spec_block(name: str) -> str:
    block = re.search(rf"<!-- vector:{name} -->\n```[a-z]*\n(.*?)\n```", SPEC, re.S)
    assert block, f"SPEC.md has no vector block {name}"
    return block.group(1)


def spec_hex(name: str) -> bytes:
    return bytes.fromhex(spec_block(name).replace("\n", ""))


VALUES = spec_values()


def object_file(object_id: str, suffix: str) -> Path:
    return VECTORS / "objects" / f"{object_id}{suffix}"


@pytest.fixture
def input_cache(tmp_path: Path) -> Path:
    """The cache of Appendix A.1: the checked-in JSON files and a pickle made here (any numpy can)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / "embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": ARRAY, **PICKLE_EXTRAS}, f)
    shutil.copy(VECTORS / "input" / "metadata.json", cache / "metadata.json")
    shutil.copy(VECTORS / "input" / "index.json", cache / "index.json")
    return cache


# ---- §4 and §11.3 written again from the spec's text ------------------------------------------------


def _piece(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


_CANONICAL = {pa.int64(): "int64", pa.date32(): "date32[day]", pa.string(): "utf8", pa.large_string(): "utf8",
              pa.float16(): "halffloat", pa.float32(): "float", pa.float64(): "double"}


def spec_content_hash_preimage(table: pa.Table) -> bytes:
    """SPEC.md §4, from its text: nothing from egds.table."""
    def canonical(t: pa.DataType) -> str:
        if pa.types.is_fixed_size_list(t):
            return f"fixed_size_list<{canonical(t.value_type)},{t.list_size}>"
        return _CANONICAL[t]

    out = b"egds-content-v1\n"
    out += _piece("".join(f"{f.name}:{canonical(f.type)}\n" for f in table.schema).encode())
    out += struct.pack("<Q", table.num_rows)
    for field, column in zip(table.schema, table.columns):
        values = column.to_pylist()
        valid = [v is not None for v in values]
        out += _piece(b"" if all(valid) else np.packbits(valid, bitorder="little").tobytes())
        kind = canonical(field.type)
        if kind == "utf8":
            data = [b"" if v is None else v.encode() for v in values]
            offsets = np.cumsum([0] + [len(d) for d in data]).astype("<i8")
            out += _piece(offsets.tobytes()) + _piece(b"".join(data))
        elif kind == "int64":
            out += _piece(np.array([0 if v is None else v for v in values], dtype="<i8").tobytes())
        elif kind == "date32[day]":
            days = [0 if v is None else (v - date(1970, 1, 1)).days for v in values]
            out += _piece(np.array(days, dtype="<i4").tobytes())
        else:  # fixed_size_list<float,2>: the rows' elements in order
            out += _piece(np.array(values, dtype="<f4").tobytes())
    return out


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def spec_metadata_json(manifest: Manifest, tables: list[pa.Table], extras: dict) -> bytes:
    """SPEC.md §11.3, from its text: each chunk from its columns and its stored `extra` text."""
    per_partition = []
    for table in tables:
        chunks = []
        for row in table.to_pylist():
            extra = row["extra"]
            members = [f'"chunk_id":{row["chunk_id"]}']
            if extra is None or "newsletter_date" not in json.loads(extra):
                members.append('"newsletter_date":' + _compact(row["newsletter_date"].isoformat()))
            members += [f"{_compact(name)}:{_compact(row[name])}" for name in TYPED if name in table.column_names]
            chunks.append("{" + ",".join(members) + ("," + extra[1:] if extra is not None else "}"))
        per_partition.append(iter(chunks))
    ordered = [next(per_partition[run.partition]) for run in manifest.row_order for _ in range(run.rows)]
    document = '{"chunks":[' + ",".join(ordered) + "]"
    if extras["metadata"]:
        document += "," + _compact(extras["metadata"])[1:-1]
    return (document + "}").encode()


# ---- the vectors ---------------------------------------------------------------------------------------


def test_the_spec_shows_the_fixture_cache() -> None:
    assert spec_block("input-metadata") + "\n" == (VECTORS / "input" / "metadata.json").read_text(encoding="utf-8")
    assert (VECTORS / "input" / "index.json").read_bytes() == b'{"newsletters": 3}\n'


def test_the_cache_derives_the_spec_row_order_content_hashes_and_extra_texts(input_cache: Path) -> None:
    layout = lay_out_cache(read_cache(input_cache), "month")
    assert layout.keys == list(KEYS)
    assert json.dumps([[r.partition, r.rows] for r in layout.row_order], separators=(",", ":")) == VALUES["row_order"]
    for partition in layout.tables():
        assert str(partition.rows) == VALUES[f"{partition.key} rows"]
        assert partition.content_hash == VALUES[f"{partition.key} content_hash"]
        assert partition.table.column_names == ["chunk_id", "newsletter_date", *TYPED, "extra", "embedding"]
        extra = json.dumps(partition.table.column("extra").to_pylist(), ensure_ascii=False, separators=(",", ":"))
        assert extra == VALUES[f"{partition.key} extra"]


def test_the_json_objects_have_the_spec_bytes_and_ids(input_cache: Path) -> None:
    contents = read_cache(input_cache)
    extras = encode_extras(contents)
    assert extras == VALUES["extras object"].encode()
    assert blake3.blake3(extras).hexdigest() == VALUES["extras id"]
    assert blake3.blake3(contents.index_bytes).hexdigest() == VALUES["index id"]
    assert object_file(VALUES["extras id"], ".json").read_bytes() == extras
    assert object_file(VALUES["index id"], ".json").read_bytes() == contents.index_bytes


@pytest.mark.parametrize("key", KEYS)
def test_the_checked_in_parquet_objects_have_the_spec_ids_and_content(key: str) -> None:
    data = object_file(VALUES[f"{key} object id"], ".parquet").read_bytes()
    assert blake3.blake3(data).hexdigest() == VALUES[f"{key} object id"]
    assert str(len(data)) == VALUES[f"{key} object bytes"]
    table = _read_parquet(data)
    assert str(table.num_rows) == VALUES[f"{key} rows"]
    assert content_hash(table) == VALUES[f"{key} content_hash"]
    # The spec's text alone gives the same hash (§4 is complete).
    assert blake3.blake3(spec_content_hash_preimage(table)).hexdigest() == VALUES[f"{key} content_hash"]
    assert b"ARROW:schema" in data  # SPEC.md §5.2: writers MUST store it


def test_the_content_hash_pre_image_is_the_spec_bytes() -> None:
    table = _read_parquet(object_file(VALUES["2025-02 object id"], ".parquet").read_bytes())
    preimage = spec_hex("preimage-2025-02")
    assert spec_content_hash_preimage(table) == preimage
    assert blake3.blake3(preimage).hexdigest() == VALUES["2025-02 content_hash"] == content_hash(table)


def vector_manifest() -> Manifest:
    entries = []
    for key in KEYS:
        object_id = VALUES[f"{key} object id"]
        table = _read_parquet(object_file(object_id, ".parquet").read_bytes())
        ids = table.column("chunk_id").to_pylist()
        entries.append(PartitionEntry(key, object_id, VALUES[f"{key} content_hash"], table.num_rows,
                                      int(VALUES[f"{key} object bytes"]), min(ids), max(ids)))
    return Manifest(
        format=1, version=1, parent=None, created_at=datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc),
        message="test vectors", model="tiny-model", dim=2, dtype="<f4", partitioning="month", rows=3,
        partitions=tuple(entries), row_order=tuple(OrderRun(p, n) for p, n in json.loads(VALUES["row_order"])),
        extras=VALUES["extras id"], index=VALUES["index id"], writer="egds 0.1.0; pyarrow 26.0.1",
    )


def test_the_manifest_has_the_spec_bytes_and_id() -> None:
    data = encode_manifest(vector_manifest())
    assert data == (spec_block("manifest") + "\n").encode()
    assert blake3.blake3(data).hexdigest() == VALUES["manifest id"]
    assert (VECTORS / "manifests" / f"{VALUES['manifest id']}.json").read_bytes() == data
    # §6.4: the indented dialect is json.dumps(indent=2, ensure_ascii=False) plus a newline.
    assert data == (json.dumps(json.loads(data), indent=2, ensure_ascii=False) + "\n").encode()


@pytest.fixture
def vector_repo(tmp_path: Path) -> Repository:
    """A repository holding exactly the fixture's objects and manifest, `main` naming it."""
    repo = Repository.init(tmp_path / "repo", cache="cache", model="tiny-model")
    for path in sorted((VECTORS / "objects").iterdir()):
        assert repo.store.put_object_bytes(path.read_bytes(), path.suffix) == path.stem
    manifest_path = VECTORS / "manifests" / f"{VALUES['manifest id']}.json"
    repo.store.write_ref("main", repo.store.put_manifest(manifest_path.read_bytes()))
    return repo


def test_checking_out_the_vectors_writes_the_spec_bytes(vector_repo: Repository, tmp_path: Path) -> None:
    vector_repo.checkout("v1", cache=tmp_path / "out")
    metadata = (tmp_path / "out" / "metadata.json").read_bytes()
    assert metadata == spec_block("checkout-metadata").encode()
    assert metadata == (VECTORS / "checkout" / "metadata.json").read_bytes()
    assert (tmp_path / "out" / "index.json").read_bytes() == (VECTORS / "input" / "index.json").read_bytes()
    with open(tmp_path / "out" / "embeddings.pkl", "rb") as f:
        loaded = pickle.load(f)
    assert list(loaded) == ["embeddings", *PICKLE_EXTRAS]
    array = loaded.pop("embeddings")
    assert (array.dtype.str, array.shape, array.tobytes()) == (ARRAY.dtype.str, ARRAY.shape, ARRAY.tobytes())
    assert array.flags.c_contiguous and array.flags.writeable
    assert loaded == PICKLE_EXTRAS


def test_the_spec_text_alone_rebuilds_the_checkout_metadata(vector_repo: Repository) -> None:
    _, manifest = vector_repo.resolve("v1")
    tables = [_read_parquet(object_file(p.object, ".parquet").read_bytes()).drop_columns(["embedding"])
              for p in manifest.partitions]
    extras = json.loads(object_file(VALUES["extras id"], ".json").read_bytes())
    assert spec_metadata_json(manifest, tables, extras) == spec_block("checkout-metadata").encode()


@pytest.mark.skipif(np.__version__.split(".")[0] != "2", reason="the pickle's bytes are those of numpy 2 (SPEC.md §11.3)")
def test_the_checkout_pickle_has_the_spec_bytes_under_numpy_2(vector_repo: Repository, tmp_path: Path) -> None:
    vector_repo.checkout("v1", cache=tmp_path / "out")
    data = (tmp_path / "out" / "embeddings.pkl").read_bytes()
    assert data == spec_hex("checkout-pickle-numpy2") == (VECTORS / "checkout" / "embeddings.pkl").read_bytes()


def test_a_snapshot_of_the_vector_cache_records_the_spec_content(tmp_path: Path, input_cache: Path) -> None:
    repo = Repository.init(tmp_path / "repo", cache=str(input_cache), model="tiny-model")
    repo.snapshot("test vectors")
    _, recorded = repo.resolve("latest")
    expected = vector_manifest()
    assert [(p.key, p.content_hash, p.rows, p.min_chunk_id, p.max_chunk_id) for p in recorded.partitions] == [
        (p.key, p.content_hash, p.rows, p.min_chunk_id, p.max_chunk_id) for p in expected.partitions
    ]
    assert (recorded.row_order, recorded.extras, recorded.index) == (expected.row_order, expected.extras, expected.index)
    if pa.__version__ == "26.0.1":  # the writer that made the checked-in objects makes the same bytes
        assert [p.object for p in recorded.partitions] == [p.object for p in expected.partitions]
