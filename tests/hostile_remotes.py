"""The hostile-remote corpus: directory remotes damaged or crafted on purpose, each with the outcome
egds must reach (issue 10, item 6; SPEC.md §13).

Every case starts from the same honest remote (v1 and v2 of a small cache, pushed by egds) and
changes it the way a broken disk, a bad mirror or an attacker could. An attacker knows the format,
so crafted manifests and objects are named by the blake3 of their bytes and carry the right
content hashes: they pass every hash check, and only egds's other checks stand between them and
the user's cache.

Expected outcome of every case: `egds clone` ends with exit status 1 or 2 (never 0, never 70, the
"internal error"), prints exactly one `egds: error: ...` line naming the remote (its URL) and the
`needles` of the case (the version, the manifest or object), leaves no clone directory, stays
within an address-space limit and finishes within a time limit. `needs` names the validation a case
waits for (it is then expected to fail until that lands, see tests/test_hostile_remotes.py).

Used as a library by the tests; `python tests/hostile_remotes.py DIR` writes every case under DIR.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))

from conftest import make_chunks, make_embeddings, write_cache  # noqa: E402
from egregora_ds import Repository  # noqa: E402
from egregora_ds.card import REF_KEY, manifest_key, object_key  # noqa: E402
from egregora_ds.ids import JSON, PARQUET, hash_bytes, short  # noqa: E402
from egregora_ds.parquet_io import encode_partition  # noqa: E402
from egregora_ds.table import EMBEDDING, content_hash  # noqa: E402

ROWS, DIM = 36, 8
#: The validation a case waits for (another part of egds is adding it).


def read_parquet_bytes(data: bytes):
    """A Parquet object's table as any reader gets it (these tests craft objects; egds' own reader
    checks them against a manifest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(data)).read()


@dataclass
class Honest:
    """The honest remote every case starts from, and what it holds."""

    path: Path
    v1: str
    v2: str

    def manifest(self, manifest_id: str) -> dict[str, Any]:
        return json.loads(self.read(manifest_key(manifest_id)))

    def read(self, key: str) -> bytes:
        return (self.path / key).read_bytes()


def build_honest(root: Path) -> Honest:
    """A repository with v1 and v2 (three months, an index and extras), pushed to `root/remote`."""
    repo = Repository.init(root / "origin", cache="cache/rag", partitioning="month", model="test-model")
    chunks, vectors = make_chunks(ROWS, months=3), make_embeddings(ROWS, dim=DIM)
    write_cache(repo.cache_path, chunks, vectors, index={"newsletters": 3}, metadata_extra={"source": "test"})
    v1 = repo.snapshot("v1").id
    chunks[20]["text"] = "edited for v2"
    write_cache(repo.cache_path, chunks, vectors, index={"newsletters": 3}, metadata_extra={"source": "test"})
    v2 = repo.snapshot("v2").id
    remote = root / "remote"
    repo.remote_add("origin", str(remote))
    repo.push("origin")
    return Honest(remote, v1, v2)


# ---- crafting -------------------------------------------------------------------------------------


class Remote:
    """A copy of the honest remote being changed for one case."""

    def __init__(self, honest: Honest, path: Path) -> None:
        self.honest = honest
        self.path = path
        shutil.copytree(honest.path, path, symlinks=True)

    @property
    def url(self) -> str:
        return str(self.path)

    def file(self, key: str) -> Path:
        return self.path.joinpath(*key.split("/"))

    def write(self, key: str, data: bytes) -> None:
        target = self.file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.write_bytes(data)

    def head(self) -> dict[str, Any]:
        return self.honest.manifest(self.honest.v2)

    def put_manifest(self, document: dict[str, Any] | bytes) -> str:
        data = document if isinstance(document, bytes) else json.dumps(document, indent=2).encode()
        manifest_id = hash_bytes(data)
        self.write(manifest_key(manifest_id), data)
        return manifest_id

    def set_ref(self, manifest_id: str) -> None:
        self.write(REF_KEY, f"{manifest_id}\n".encode())

    def put_head(self, document: dict[str, Any] | bytes) -> str:
        manifest_id = self.put_manifest(document)
        self.set_ref(manifest_id)
        return manifest_id

    def put_object(self, data: bytes, suffix: str) -> str:
        object_id = hash_bytes(data)
        self.write(object_key(object_id, suffix), data)
        return object_id

    def partition_table(self, index: int = 0) -> pa.Table:
        entry = self.head()["partitions"][index]
        return read_parquet_bytes(self.honest.read(object_key(entry["object"], PARQUET)))

    def replace_partition(self, document: dict[str, Any], index: int, table: pa.Table, **entry: Any) -> str:
        """Store `table` as a Parquet object with its true content hash and point partition `index` at it."""
        key = document["partitions"][index]["key"]
        data = encode_partition(table, key, content_hash(table)).to_pybytes()
        object_id = self.put_object(data, PARQUET)
        document["partitions"][index].update(
            {"object": object_id, "content_hash": content_hash(table), "rows": table.num_rows, "bytes": len(data), **entry}
        )
        return object_id

    def sparse(self, key: str, size: int) -> None:
        """A file of `size` bytes that takes no disk space (reading it all would take that much memory)."""
        self.write(key, b"")
        os.truncate(self.file(key), size)

    def symlink(self, key: str, target: str | Path) -> None:
        link = self.file(key)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink() if not link.is_dir() or link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(target)


@dataclass
class Case:
    name: str
    craft: Callable[[Remote], list[str]]
    """Change the remote; return the needles the error line must hold besides the remote's URL."""
    needs: str | None = None
    """Why the case cannot pass yet (it waits for another part of egds), or None."""


CASES: list[Case] = []


def case(name: str, *, needs: str | None = None) -> Callable[[Callable[[Remote], list[str]]], Callable[[Remote], list[str]]]:
    def register(craft: Callable[[Remote], list[str]]) -> Callable[[Remote], list[str]]:
        CASES.append(Case(name, craft, needs))
        return craft

    return register


def _v2(remote: Remote) -> dict[str, Any]:
    """A fresh copy of the honest head manifest (v2), to change."""
    return remote.head()


# ---- the ref ----------------------------------------------------------------------------------------


@case("ref-names-a-missing-manifest")
def _(r: Remote) -> list[str]:
    missing = "ab" * 32
    r.set_ref(missing)
    return [short(missing), "lacks manifest"]


@case("ref-is-garbage")
def _(r: Remote) -> list[str]:
    r.write(REF_KEY, b"<html>gateway error</html>\n")
    return [REF_KEY, "not a manifest id"]


@case("ref-is-huge")
def _(r: Remote) -> list[str]:
    r.sparse(REF_KEY, 1 << 30)
    return [REF_KEY, "larger than"]


@case("ref-is-a-symlink-to-dev-zero")
def _(r: Remote) -> list[str]:
    r.symlink(REF_KEY, "/dev/zero")
    return [REF_KEY, "symbolic link"]


@case("ref-is-a-symlink-to-a-local-file")
def _(r: Remote) -> list[str]:
    secret = r.path.parent / f"{r.path.name}-secret.txt"
    secret.write_text("TOPSECRET-do-not-print-me\n")
    r.symlink(REF_KEY, secret)
    return [REF_KEY, "symbolic link"]


@case("ref-is-a-fifo")
def _(r: Remote) -> list[str]:
    r.file(REF_KEY).unlink()
    os.mkfifo(r.file(REF_KEY))
    return [REF_KEY, "not a regular file"]


@case("refs-directory-is-a-symlink-out-of-the-remote")
def _(r: Remote) -> list[str]:
    outside = r.path.parent / f"{r.path.name}-elsewhere"
    outside.mkdir()
    (outside / "main").write_bytes(r.honest.read(REF_KEY))
    shutil.rmtree(r.file("egds/refs"))
    r.symlink("egds/refs", outside)
    return [REF_KEY, "symbolic link"]


# ---- manifests: bytes ------------------------------------------------------------------------------


@case("manifest-is-not-json")
def _(r: Remote) -> list[str]:
    return [short(r.put_head(b"this is { not json"))]


@case("manifest-is-truncated")
def _(r: Remote) -> list[str]:
    return [short(r.put_head(r.honest.read(manifest_key(r.honest.v2))[:200]))]


@case("manifest-bytes-do-not-match-its-name")
def _(r: Remote) -> list[str]:
    claimed = "cd" * 32
    r.write(manifest_key(claimed), r.honest.read(manifest_key(r.honest.v2)))
    r.set_ref(claimed)
    return [short(claimed), "hash"]


@case("manifest-is-huge")
def _(r: Remote) -> list[str]:
    claimed = "ef" * 32
    r.sparse(manifest_key(claimed), 300 << 20)
    r.set_ref(claimed)
    return [short(claimed), "larger than"]


@case("manifest-is-a-symlink-out-of-the-remote")
def _(r: Remote) -> list[str]:
    key = manifest_key(r.honest.v2)
    outside = r.path.parent / f"{r.path.name}-v2.json"
    outside.write_bytes(r.honest.read(key))
    r.symlink(key, outside)
    return [short(r.honest.v2), "symbolic link"]


@case("manifest-format-is-unknown")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["format"] = 2
    return [short(r.put_head(document)), "format 2", "upgrade it"]


@case("manifest-format-is-zero")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["format"] = 0
    return [short(r.put_head(document)), "format 0"]


@case("manifest-names-an-object-by-a-path")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["partitions"][0]["object"] = "../../../../etc/passwd"
    return [short(r.put_head(document))]


@case("manifest-names-an-index-by-a-path")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["index"] = "../" * 8 + "etc/passwd"
    return [short(r.put_head(document))]


# ---- manifests: the chain --------------------------------------------------------------------------


@case("chain-skips-a-version")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["version"] = 3  # its parent is v1: v2 is skipped
    r.put_head(document)
    return [short(r.honest.v1), "version 3", "count down by one"]


@case("chain-repeats-a-version")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["version"] = 1  # a second version 1, naming v1 as its parent
    return [short(r.put_head(document)), "version 1 has a parent"]


@case("chain-version-two-without-a-parent")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["parent"] = None
    return [short(r.put_head(document)), "version 2 has no parent"]


@case("chain-version-zero")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["version"], document["parent"] = 0, None
    return [short(r.put_head(document)), "version 0"]


@case("chain-negative-version")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["version"], document["parent"] = -5, None
    return [short(r.put_head(document)), "version -5"]


@case("chain-names-itself-as-parent")
def _(r: Remote) -> list[str]:
    # A manifest cannot hold its own hash; stored under the name it claims, it fails the hash check.
    document = _v2(r)
    claimed = "12" * 32
    document["parent"] = claimed
    r.write(manifest_key(claimed), json.dumps(document).encode())
    r.set_ref(claimed)
    return [short(claimed), "hash"]


@case("chain-cycle-through-a-mislabelled-manifest")
def _(r: Remote) -> list[str]:
    # A -> B -> A would need each hash inside the other: only a manifest stored under a wrong name
    # can close the loop, and the hash check stops the walk there.
    first = "34" * 32
    document = _v2(r)
    document["version"], document["parent"] = 3, first
    second = r.put_head(document)
    loop = _v2(r)
    loop["parent"] = second
    r.write(manifest_key(first), json.dumps(loop).encode())
    return [short(first), "hash"]


@case("chain-claims-a-billion-versions")
def _(r: Remote) -> list[str]:
    parent = "56" * 32  # never there: the claim must be refused long before the walk gets this far
    version = 10**9 - 39
    for _ in range(40):
        document = _v2(r)
        document["version"], document["parent"] = version, parent
        parent = r.put_manifest(document)
        version += 1
    r.set_ref(parent)
    return [short(parent), "claims version 1,000,000,000"]


@case("chain-parent-is-missing")
def _(r: Remote) -> list[str]:
    r.file(manifest_key(r.honest.v1)).unlink()
    return [short(r.honest.v1), "lacks manifest"]


# ---- objects: bytes --------------------------------------------------------------------------------


def _object(r: Remote, index: int = 0) -> tuple[str, str]:
    entry = _v2(r)["partitions"][index]
    return entry["object"], entry["key"]


@case("object-is-missing")
def _(r: Remote) -> list[str]:
    object_id, key = _object(r)
    r.file(object_key(object_id, PARQUET)).unlink()
    return [short(object_id), f"partition {key} of version 2", "lacks"]


@case("object-is-truncated")
def _(r: Remote) -> list[str]:
    object_id, key = _object(r)
    r.write(object_key(object_id, PARQUET), r.honest.read(object_key(object_id, PARQUET))[:-100])
    return [short(object_id), f"partition {key} of version 2", "hash"]


@case("object-is-larger-than-its-manifest-says")
def _(r: Remote) -> list[str]:
    object_id, key = _object(r)
    r.sparse(object_key(object_id, PARQUET), 2 << 30)
    return [short(object_id), f"partition {key} of version 2", "larger than"]


@case("object-is-a-symlink-to-dev-zero")
def _(r: Remote) -> list[str]:
    object_id, key = _object(r)
    r.symlink(object_key(object_id, PARQUET), "/dev/zero")
    return [short(object_id), f"partition {key} of version 2", "symbolic link"]


@case("object-is-a-fifo")
def _(r: Remote) -> list[str]:
    object_id, key = _object(r)
    r.file(object_key(object_id, PARQUET)).unlink()
    os.mkfifo(r.file(object_key(object_id, PARQUET)))
    return [short(object_id), f"partition {key} of version 2", "not a regular file"]


@case("object-size-in-the-manifest-is-huge")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["partitions"][0]["bytes"] = 10**15
    r.put_head(document)
    return [short(document["partitions"][0]["object"]), "version 2"]


@case("object-hashes-right-but-is-not-parquet")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    junk = b"PAR1 this is not a parquet file at all PAR1"
    object_id = r.put_object(junk, PARQUET)
    document["partitions"][0].update({"object": object_id, "bytes": len(junk)})
    r.put_head(document)
    return [short(object_id), "version 2"]


@case("object-is-an-empty-file")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    object_id = r.put_object(b"", PARQUET)
    document["partitions"][0].update({"object": object_id, "bytes": 0})
    r.put_head(document)
    return [short(object_id), "version 2"]


# ---- objects: content (right hashes, wrong shape) --------------------------------------------------


@case("object-without-an-embedding-column")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    object_id = r.replace_partition(document, 0, r.partition_table().drop_columns([EMBEDDING]))
    r.put_head(document)
    return [short(object_id), "version 2"]


@case("object-with-the-wrong-dimension")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    table = r.partition_table()
    values = pa.array([0.5] * (table.num_rows * (DIM + 3)), pa.float32())
    wide = pa.FixedSizeListArray.from_arrays(values, DIM + 3)
    object_id = r.replace_partition(document, 0, table.set_column(table.column_names.index(EMBEDDING), EMBEDDING, wide))
    r.put_head(document)
    return [short(object_id), "version 2"]


@case("object-with-more-rows-than-the-manifest-says")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    table = r.partition_table()
    bigger = pa.concat_tables([table, table])
    object_id = r.replace_partition(document, 0, bigger)
    document["partitions"][0]["rows"] = table.num_rows  # the row order and the totals still say the old count
    r.put_head(document)
    return [short(object_id), "version 2"]


@case("manifest-dimension-disagrees-with-the-objects")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["dim"] = DIM * 2
    r.put_head(document)
    return ["version 2", "embedding column"]


@case("manifest-claims-ten-billion-rows")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    huge = 10**10
    document["rows"] = huge - document["partitions"][0]["rows"] + document["rows"]
    document["partitions"][0]["rows"] = huge
    document["row_order"] = [[0, huge]] + [run for run in document["row_order"] if run[0] != 0]
    document["rows"] = sum(run[1] for run in document["row_order"])
    r.put_head(document)
    return ["version 2", f"the manifest {huge}"]


@case("manifest-row-order-names-a-missing-partition")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["row_order"] = [[7, document["rows"]]]
    return [short(r.put_head(document))]


@case("manifest-row-order-does-not-add-up")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["row_order"] = document["row_order"][:-1]
    return [short(r.put_head(document))]


@case("manifest-dtype-is-object")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["dtype"] = "|O"
    return [short(r.put_head(document))]


@case("manifest-dtype-is-a-string-type")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["dtype"] = "<U8"
    return [short(r.put_head(document))]


@case("manifest-dtype-is-not-a-dtype")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["dtype"] = "not-a-dtype"
    return [short(r.put_head(document))]


@case("manifest-partition-keys-are-not-sorted")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["partitions"] = list(reversed(document["partitions"]))
    return [short(r.put_head(document))]


@case("extras-are-not-an-object")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["extras"] = r.put_object(b"[1, 2, 3]", JSON)
    r.put_head(document)
    return [short(document["extras"])]


@case("extras-metadata-is-not-an-object")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["extras"] = r.put_object(b'{"metadata": "surprise", "pickle": {}}', JSON)
    r.put_head(document)
    return [short(document["extras"])]


@case("extras-shadow-the-chunks-key")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["extras"] = r.put_object(b'{"metadata": {"chunks": []}, "pickle": {"embeddings": "x"}}', JSON)
    r.put_head(document)
    return [short(document["extras"])]


@case("extras-are-not-json")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["extras"] = r.put_object(b"{not json", JSON)
    r.put_head(document)
    return [short(document["extras"])]


@case("index-is-not-json")
def _(r: Remote) -> list[str]:
    document = _v2(r)
    document["index"] = r.put_object(b"\xff\xfe not json", JSON)
    r.put_head(document)
    return [short(document["index"])]


def make_case(honest: Honest, item: Case, path: Path) -> tuple[Remote, list[str]]:
    remote = Remote(honest, path)
    needles = item.craft(remote)
    return remote, needles


def main(directory: str) -> None:
    root = Path(directory)
    honest = build_honest(root / "honest")
    for item in CASES:
        remote, needles = make_case(honest, item, root / item.name)
        print(f"{item.name}: {remote.url} -> error naming {needles}{' (' + item.needs + ')' if item.needs else ''}")


if __name__ == "__main__":
    main(sys.argv[1])
