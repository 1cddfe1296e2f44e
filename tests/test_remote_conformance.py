"""One conformance suite run against every remote backend (directory, Internet Archive through the
emulator, memory), in the style of restic's and dulwich's backend tests.

The first half drives the `Remote` protocol directly (inventory / get / put); the second half drives
the repository operations (push, clone, pull, checkout, partial clone, dry run) and checks what lands
on the remote: only new objects, a dataset card, a plain `manifest.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import (
    RemoteBackend,
    assert_same_cache,
    load_cache,
    make_chunks,
    make_embeddings,
    write_cache,
)
from egregora_ds import Repository
from egregora_ds.card import CARD_KEY, LATEST_KEY, REF_KEY, manifest_key, object_key
from egregora_ds.cli import app
from egregora_ds.errors import CorruptObject, UsageError
from egregora_ds.store.base import RefMoved, RemoteError, UploadSource
from egregora_ds.ids import hash_bytes
from egregora_ds.transfer import manifest_object_keys

ROWS, DIM = 30, 8  # 30 chunks over 6 months: 5 rows in each of 2024-01 … 2024-06
CHANGED = "2024-03"  # v2 edits one chunk of this partition and nothing else

ANY_SIZE = 1 << 30  # reads in these tests are bounded only to satisfy the protocol


# ---- backend level ------------------------------------------------------------------------------


def test_a_new_remote_has_an_empty_inventory(remote_backend: RemoteBackend) -> None:
    assert remote_backend.remote().inventory() == {}


def test_put_bytes_then_get_returns_exactly_those_bytes(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    data = bytes(range(256)) * 3 + b"\x00\r\n"
    remote.put("blob.bin", data)
    assert remote.get("blob.bin", ANY_SIZE) == data


def _local_object(tmp_path: Path, data: bytes) -> UploadSource:
    source = tmp_path / "source.parquet"
    source.write_bytes(data)
    return UploadSource(source, hash_bytes(data), ".parquet")


def test_put_a_local_object_then_get_returns_the_files_bytes(remote_backend: RemoteBackend, tmp_path: Path) -> None:
    source = _local_object(tmp_path, os.urandom(4096))
    remote = remote_backend.remote()
    remote.put("from-path.parquet", source)
    assert remote.get("from-path.parquet", ANY_SIZE) == source.path.read_bytes()
    assert source.path.exists(), "put must not consume its source file"


def test_a_local_object_whose_bytes_do_not_match_its_name_is_refused_and_never_visible(
    remote_backend: RemoteBackend, tmp_path: Path
) -> None:
    data = bytearray(os.urandom(4096))
    source = _local_object(tmp_path, bytes(data))
    data[100] ^= 0x01  # one flipped bit on the local disk, after the object was named
    source.path.write_bytes(bytes(data))
    remote = remote_backend.remote()
    with pytest.raises(CorruptObject, match="egds verify"):
        remote.put("egds/objects/xx/bad.parquet", source)
    remote_backend.settle()
    assert remote.get("egds/objects/xx/bad.parquet", ANY_SIZE) is None
    assert "egds/objects/xx/bad.parquet" not in remote.inventory()


def test_a_read_larger_than_its_bound_is_refused_without_echoing_the_content(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    remote.put("egds/refs/main", b"SECRET" * 100)
    with pytest.raises(RemoteError, match="larger than the 128 bytes") as caught:
        remote.get("egds/refs/main", 128)
    assert "SECRET" not in str(caught.value)
    assert remote.get("egds/refs/main", 600) == b"SECRET" * 100


def test_a_ref_compare_and_swap_succeeds_only_against_the_current_bytes(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    remote.put_ref("egds/refs/main", b"a\n", None)
    with pytest.raises(RefMoved):
        remote.put_ref("egds/refs/main", b"b\n", None)
    with pytest.raises(RefMoved):
        remote.put_ref("egds/refs/main", b"b\n", b"stale\n")
    remote.put_ref("egds/refs/main", b"b\n", b"a\n")
    assert remote.get("egds/refs/main", ANY_SIZE) == b"b\n"


def test_an_empty_object_round_trips(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    remote.put("empty", b"")
    assert remote.get("empty", ANY_SIZE) == b""
    remote_backend.settle()
    assert remote.inventory()["empty"].size == 0


def test_inventory_lists_every_key_with_its_size_and_a_correct_md5_when_it_gives_one(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    blobs = {"a.bin": b"a" * 10, "b.bin": os.urandom(1000), "c/d.json": b'{"x": 1}'}
    for key, data in blobs.items():
        remote.put(key, data)
    remote_backend.settle()
    inventory = remote.inventory()
    assert set(inventory) == set(blobs)
    for key, data in blobs.items():
        assert inventory[key].size == len(data), key
        if inventory[key].md5 is not None:
            assert inventory[key].md5 == hashlib.md5(data).hexdigest(), key


def test_get_of_a_missing_key_returns_none(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    assert remote.get("egds/refs/main", ANY_SIZE) is None
    remote.put("present", b"x")
    assert remote.get("absent", ANY_SIZE) is None
    assert remote.get("present/deeper", ANY_SIZE) is None


def test_put_over_an_existing_key_replaces_it(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    remote.put("egds/refs/main", b"first version, longer\n")
    remote.put("egds/refs/main", b"second\n")
    assert remote.get("egds/refs/main", ANY_SIZE) == b"second\n"
    remote_backend.settle()
    inventory = remote.inventory()
    assert set(inventory) == {"egds/refs/main"}, "an overwrite must not leave a second visible key"
    assert inventory["egds/refs/main"].size == len(b"second\n")


def test_keys_with_nested_slashes_round_trip_and_are_listed_whole(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    keys = {
        "egds/objects/ab/" + "ab" * 32 + ".parquet": b"parquet bytes",
        "egds/manifests/" + "cd" * 32 + ".json": b"{}",
        "a/b/c/d/e.bin": b"deep",
        "top.txt": b"top",
    }
    for key, data in keys.items():
        remote.put(key, data)
    for key, data in keys.items():
        assert remote.get(key, ANY_SIZE) == data
    remote_backend.settle()
    assert set(remote.inventory()) == set(keys)


def test_a_10_mb_object_round_trips_byte_for_byte(remote_backend: RemoteBackend, tmp_path: Path) -> None:
    data = np.random.default_rng(7).bytes(10 * 1024 * 1024)
    source = _local_object(tmp_path, data)
    remote = remote_backend.remote()
    remote.put("egds/objects/bi/big.parquet", source)
    got = remote.get("egds/objects/bi/big.parquet", ANY_SIZE)
    assert got is not None and len(got) == len(data) and hash_bytes(got) == hash_bytes(data)
    remote_backend.settle()
    assert remote.inventory()["egds/objects/bi/big.parquet"].size == len(data)


def test_describe_names_where_the_remote_is(remote_backend: RemoteBackend) -> None:
    description = remote_backend.remote().describe()
    assert remote_backend.url.split(":", 1)[-1] in description


def test_a_backend_with_credentials_is_writable(remote_backend: RemoteBackend) -> None:
    remote_backend.remote().check_writable()  # raises RemoteAuthError otherwise


# ---- repository level ---------------------------------------------------------------------------


@dataclass
class Origin:
    """A repository with v1 recorded and pushed to `backend` as remote `origin`."""

    repo: Repository
    backend: RemoteBackend
    v1_cache: Path  # a copy of the cache exactly as the pipeline wrote it for v1
    v1_id: str
    v1_push: Any

    def snapshot_v2(self) -> str:
        """Edit one chunk of CHANGED (text and vector) and record v2; returns its id."""
        chunks, vectors = make_chunks(ROWS), make_embeddings(ROWS, dim=DIM)
        row = next(i for i, c in enumerate(chunks) if c["newsletter_date"].startswith(CHANGED))
        chunks[row]["text"] = "texto editado na v2"
        chunks[row]["char_count"] = len(chunks[row]["text"])
        vectors[row] = -vectors[row]
        write_cache(self.repo.cache_path, chunks, vectors, index={"newsletters": 6})
        result = self.repo.snapshot("v2: one chunk edited")
        assert result.created and result.version == 2
        return result.id

    def clone(self, directory: Path, **kwargs: Any) -> Repository:
        with self.backend.anonymous():
            Repository.clone(self.backend.url, directory, **kwargs)
        return Repository.open(directory)


@pytest.fixture
def origin(remote_backend: RemoteBackend, tmp_path: Path) -> Origin:
    repo = Repository.init(tmp_path / "origin", cache="cache/rag", partitioning="month", model="test-model")
    write_cache(repo.cache_path, make_chunks(ROWS), make_embeddings(ROWS, dim=DIM), index={"newsletters": 6})
    v1_cache = tmp_path / "v1-cache"
    shutil.copytree(repo.cache_path, v1_cache)
    v1 = repo.snapshot("v1")
    repo.remote_add("origin", remote_backend.url, title="Test newsletter embeddings", license="CC-BY-4.0")
    pushed = repo.push("origin")
    remote_backend.settle()
    return Origin(repo, remote_backend, v1_cache, v1.id, pushed)


def object_keys_of(repo: Repository, manifest_id: str) -> set[str]:
    return {object_key(i, s) for i, s in manifest_object_keys(repo.manifest(manifest_id))}


def remote_ref(backend: RemoteBackend) -> str | None:
    data = backend.remote().get(REF_KEY, ANY_SIZE)
    return None if data is None else data.decode().strip()


def test_the_first_push_uploads_every_object_of_v1_then_its_manifest_then_the_ref(origin: Origin) -> None:
    repo, backend = origin.repo, origin.backend
    expected = object_keys_of(repo, origin.v1_id)
    assert origin.v1_push.objects_uploaded == len(expected) == 7  # 6 partitions + index.json
    assert origin.v1_push.manifests_uploaded == 1 and origin.v1_push.ref_updated
    stored = backend.stored()
    assert expected <= set(stored)
    assert manifest_key(origin.v1_id) in stored
    assert remote_ref(backend) == origin.v1_id
    for key in expected:  # every object on the remote is named by the hash of its bytes
        assert hash_bytes(stored[key]) in key


def test_a_pushed_version_clones_without_credentials_into_an_identical_cache(origin: Origin, tmp_path: Path) -> None:
    mark = origin.backend.mark()
    clone = origin.clone(tmp_path / "clone")
    assert origin.backend.writes_since(mark) == [], "a clone must never write to the remote"
    assert clone.head() == origin.v1_id
    assert_same_cache(clone.cache_path, origin.v1_cache)
    assert clone.verify().ok
    assert clone.remote_list()["origin"].url == origin.backend.url


def test_pushing_a_version_with_one_changed_partition_uploads_only_its_new_objects(origin: Origin) -> None:
    repo, backend = origin.repo, origin.backend
    v2 = origin.snapshot_v2()
    new_objects = object_keys_of(repo, v2) - object_keys_of(repo, origin.v1_id)
    assert len(new_objects) == 1 and CHANGED not in new_objects  # one Parquet object, named by hash
    mark = backend.mark()
    result = repo.push("origin")
    written = backend.writes_since(mark)
    assert sorted(k for k in written if k.startswith("egds/objects/")) == sorted(new_objects)
    assert written.count(manifest_key(v2)) == 1 and manifest_key(origin.v1_id) not in written
    assert result.objects_uploaded == 1 and result.objects_skipped == 7 and result.manifests_uploaded == 1
    if backend.kind != "directory":  # a directory does not record the order of its writes
        # The ref moves after everything it names is there; the card (and its settings, and manifest.json
        # last) only after it.
        assert written[-4:] == [REF_KEY, "egds/card.json", CARD_KEY, LATEST_KEY], written
    assert remote_ref(backend) == v2


def test_pull_in_a_clone_brings_its_cache_to_the_new_version(origin: Origin, tmp_path: Path) -> None:
    clone = origin.clone(tmp_path / "clone")
    v2 = origin.snapshot_v2()
    origin.repo.push("origin")
    origin.backend.settle()
    with origin.backend.anonymous():
        result = clone.pull("origin")
    assert result.updated and result.version == 2 and result.id == v2
    assert result.objects_fetched == 1 and result.manifests_fetched == 1
    assert clone.head() == v2
    assert_same_cache(clone.cache_path, origin.repo.cache_path)
    assert clone.verify().ok


def test_checkout_v1_in_a_clone_that_pulled_v2_rebuilds_the_original_v1(origin: Origin, tmp_path: Path) -> None:
    clone = origin.clone(tmp_path / "clone")
    origin.snapshot_v2()
    origin.repo.push("origin")
    with origin.backend.anonymous():
        clone.pull("origin")
        clone.checkout("v1")
    assert_same_cache(clone.cache_path, origin.v1_cache)


def test_pushing_again_without_changes_uploads_nothing(origin: Origin) -> None:
    origin.snapshot_v2()
    origin.repo.push("origin")
    origin.backend.settle()
    mark = origin.backend.mark()
    again = origin.repo.push("origin")
    assert again.objects_uploaded == 0 and again.manifests_uploaded == 0
    assert not again.ref_updated and not again.card_uploaded
    assert origin.backend.writes_since(mark) == []


def test_an_up_to_date_clone_pushes_nothing_and_needs_no_credentials(origin: Origin, tmp_path: Path) -> None:
    clone = origin.clone(tmp_path / "clone")
    mark = origin.backend.mark()
    with origin.backend.anonymous():
        result = clone.push("origin")
    assert result.objects_uploaded == 0 and not result.ref_updated
    assert origin.backend.writes_since(mark) == []


def test_the_remote_holds_a_dataset_card_with_model_versions_files_examples_and_license(origin: Origin) -> None:
    repo = origin.repo
    v2 = origin.snapshot_v2()
    repo.push("origin")
    card_bytes = origin.backend.remote().get(CARD_KEY, ANY_SIZE)
    assert card_bytes is not None
    card = card_bytes.decode("utf-8")
    assert card.startswith("# Test newsletter embeddings\n")
    assert "`test-model`" in card and f"dimension {DIM}" in card
    versions = [line for line in card.splitlines() if line.startswith("| v") and line[3:4].isdigit()]
    assert [line.split("|")[1].strip() for line in versions] == ["v2", "v1"]
    assert v2[:12] in versions[0] and origin.v1_id[:12] in versions[1]
    manifest = repo.manifest(v2)
    for partition in manifest.partitions:  # the partition -> file table of the latest version
        row = next(line for line in card.splitlines() if line.startswith(f"| {partition.key} |"))
        assert object_key(partition.object, ".parquet") in row
    assert "import polars as pl" in card and "pl.read_parquet(" in card
    assert "```sql" in card and "read_parquet([" in card  # DuckDB
    assert "**License:** CC-BY-4.0" in card
    assert f"egds clone {origin.backend.url}" in card


def test_the_remote_holds_a_latest_manifest_json_mapping_partitions_to_keys_it_holds(origin: Origin) -> None:
    repo, backend = origin.repo, origin.backend
    v2 = origin.snapshot_v2()
    repo.push("origin")
    backend.settle()
    remote = backend.remote()
    latest = json.loads(remote.get(LATEST_KEY, ANY_SIZE))  # type: ignore[arg-type]
    assert latest["id"] == remote_ref(backend) == v2
    manifest = repo.manifest(v2)
    assert latest["manifest"]["version"] == 2
    assert set(latest["files"]) == {p.key for p in manifest.partitions}
    inventory = remote.inventory()
    for partition in manifest.partitions:
        key = latest["files"][partition.key]
        assert key in inventory
        assert hash_bytes(remote.get(key, ANY_SIZE)) == partition.object  # type: ignore[arg-type]
    assert latest["index"] in inventory


def test_a_partial_clone_holds_only_the_chosen_partitions_rows(origin: Origin, tmp_path: Path) -> None:
    clone = origin.clone(tmp_path / "partial", partitions=[CHANGED])
    pickled, metadata, index = load_cache(clone.cache_path)
    chunks, vectors = make_chunks(ROWS), make_embeddings(ROWS, dim=DIM)
    rows = [i for i, c in enumerate(chunks) if c["newsletter_date"].startswith(CHANGED)]
    assert metadata["chunks"] == [chunks[i] for i in rows]
    assert pickled["embeddings"].tobytes() == vectors[rows].tobytes()
    assert index == {"newsletters": 6}
    stored = {p.name for p in clone.store.objects_dir.rglob("*.parquet")}
    assert len(stored) == 1


def test_a_partial_clone_says_so_in_status_and_verify(origin: Origin, tmp_path: Path) -> None:
    clone = origin.clone(tmp_path / "partial", partitions=[CHANGED])
    assert clone.status().partial == [CHANGED]
    report = clone.verify()
    assert report.ok, report.problems
    assert any("not fetched" in note and "5 objects" in note for note in report.notes), report.notes


def test_a_partial_clone_refuses_to_snapshot(origin: Origin, tmp_path: Path) -> None:
    clone = origin.clone(tmp_path / "partial", partitions=[CHANGED])
    with pytest.raises(UsageError, match="partial checkout"):
        clone.snapshot("would delete five partitions")
    assert clone.head() == origin.v1_id


def test_a_full_checkout_in_a_partial_clone_fetches_the_rest_from_origin(origin: Origin, tmp_path: Path) -> None:
    clone = origin.clone(tmp_path / "partial", partitions=[CHANGED])
    other = tmp_path / "full-cache"
    with origin.backend.anonymous():
        result = clone.checkout("latest", cache=other)
    assert not result.partial and result.rows == ROWS
    assert_same_cache(other, origin.v1_cache)
    report = clone.verify()
    assert report.ok and not any("not fetched" in note for note in report.notes)


def test_a_dry_run_push_uploads_nothing_and_returns_the_plan(origin: Origin) -> None:
    repo, backend = origin.repo, origin.backend
    v2 = origin.snapshot_v2()
    new_objects = object_keys_of(repo, v2) - object_keys_of(repo, origin.v1_id)
    mark = backend.mark()
    with backend.anonymous():  # planning only reads: it needs no credentials
        result = repo.push("origin", dry_run=True)
    assert backend.writes_since(mark) == []
    assert remote_ref(backend) == origin.v1_id
    assert result.dry_run and result.objects_uploaded == 0 and result.manifests_uploaded == 0
    plan = result.plan
    assert plan is not None
    assert {o.key for o in plan.objects} == new_objects and plan.objects_skipped == 7
    assert all(o.bytes > 0 for o in plan.objects)
    assert plan.manifests == [manifest_key(v2)]
    assert plan.ref == v2 and plan.remote_ref == origin.v1_id and plan.ref_update and plan.card
    assert repo.store.read_ref("remotes/origin/main") == origin.v1_id, "a dry run moves no remote-tracking ref"


def test_the_cli_dry_run_prints_the_plan_as_json_and_uploads_nothing(origin: Origin) -> None:
    backend = origin.backend
    v2 = origin.snapshot_v2()
    mark = backend.mark()
    result = CliRunner().invoke(app, ["-C", str(origin.repo.root), "push", "origin", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["dry_run"] is True and printed["objects_uploaded"] == 0
    assert printed["plan"]["ref"] == v2 and len(printed["plan"]["objects"]) == 1
    assert backend.writes_since(mark) == []


def test_the_cli_pushes_and_clones_the_same_cache(remote_backend: RemoteBackend, tmp_path: Path) -> None:
    root = tmp_path / "cli-origin"
    root.mkdir()
    runner = CliRunner()
    assert runner.invoke(app, ["-C", str(root), "init", "--model", "test-model"]).exit_code == 0
    write_cache(root / "cache" / "rag", make_chunks(ROWS), make_embeddings(ROWS, dim=DIM), index={"n": 1})
    for args in (["snapshot", "-m", "v1"], ["remote", "add", "origin", remote_backend.url], ["push"]):
        result = runner.invoke(app, ["-C", str(root), *args])
        assert result.exit_code == 0, (args, result.output)
    listed = runner.invoke(app, ["-C", str(root), "remote", "list", "--json"])
    assert json.loads(listed.stdout)["origin"]["url"] == remote_backend.url
    with remote_backend.anonymous():
        result = runner.invoke(app, ["-C", str(tmp_path), "clone", remote_backend.url, "cli-clone", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == ROWS
    assert_same_cache(tmp_path / "cli-clone" / "cache" / "rag", root / "cache" / "rag")


# ---- Internet Archive specifics -----------------------------------------------------------------


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_a_pushed_ia_item_has_mediatype_data_and_the_title_given(origin: Origin) -> None:
    metadata = origin.backend.emu.item_metadata(origin.backend.identifier)
    assert metadata["mediatype"] == "data"
    assert metadata["title"] == "Test newsletter embeddings"


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_an_ia_item_pushed_without_a_title_gets_a_default_one(remote_backend: RemoteBackend, filled_repo: Repository) -> None:
    filled_repo.remote_add("origin", remote_backend.url)
    filled_repo.push("origin")
    metadata = remote_backend.emu.item_metadata(remote_backend.identifier)
    assert metadata["mediatype"] == "data"
    assert remote_backend.identifier in metadata["title"]


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_an_ia_clone_only_reads_downloads_and_never_touches_s3(origin: Origin, tmp_path: Path) -> None:
    emu = origin.backend.emu
    start = len(emu.requests)
    origin.clone(tmp_path / "clone")
    requests = emu.requests[start:]
    assert requests and all(r.method == "GET" for r in requests)
    assert all(r.host == "archive.org" for r in requests), "a clone reads downloads only, never S3"


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_under_metadata_lag_an_ia_upload_reads_back_at_once_and_is_listed_once_settled(remote_backend: RemoteBackend) -> None:
    remote_backend.emu.metadata_lag = 3600
    remote = remote_backend.remote()
    remote.put("egds/refs/main", b"x" * 65)
    assert remote.get("egds/refs/main", ANY_SIZE) == b"x" * 65
    assert remote.inventory() == {}
    remote_backend.settle()
    assert remote.inventory()["egds/refs/main"].size == 65


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_an_ia_inventory_leaves_out_the_files_archive_org_adds_and_old_versions(remote_backend: RemoteBackend) -> None:
    identifier = remote_backend.identifier
    remote = remote_backend.remote()
    remote.put("README.md", b"v1")
    remote.put("README.md", b"v2")  # x-archive-keep-old-version keeps v1 under history/
    for own in (f"{identifier}_files.xml", f"{identifier}_meta.xml", f"{identifier}_meta.sqlite", "__ia_thumb.jpg"):
        remote_backend.emu.put_file(identifier, own, b"<archive.org's own>")
    assert any(k.startswith("history/") for k in remote_backend.emu.files(identifier))
    assert set(remote.inventory()) == {"README.md"}


@pytest.mark.parametrize("remote_backend", ["directory"], indirect=True)
def test_a_directory_inventory_leaves_out_temp_files_of_an_interrupted_upload(remote_backend: RemoteBackend) -> None:
    remote = remote_backend.remote()
    remote.put("egds/objects/ab/x.parquet", b"whole")
    (remote_backend.path / "egds" / "objects" / "ab" / ".y.parquet.k2j3.tmp").write_bytes(b"half")
    assert set(remote.inventory()) == {"egds/objects/ab/x.parquet"}
