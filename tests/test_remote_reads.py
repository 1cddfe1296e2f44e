"""Reading remotes safely: a directory remote reads only regular files inside it, never follows a
symbolic link, never waits on a FIFO, never reads more than the caller's bound and never echoes a
file's content (SPEC.md §14.1); and a remote's manifest chain is walked in bounded, batched steps
(SPEC.md §14.3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.card import REF_KEY, manifest_key
from egregora_ds.errors import CorruptObject, EgdsError
from egregora_ds.ids import hash_bytes, short
from egregora_ds.store.base import RemoteError
from egregora_ds.store.directory import DirectoryRemote
from egregora_ds.transfer import LISTING_LAG_ALLOWANCE, WALK_ALONE

EGDS = Path(sys.executable).with_name("egds")
SECRET = "TOPSECRET-ssh-key-material"


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    root = tmp_path / "remote"
    (root / "egds" / "refs").mkdir(parents=True)
    (root / "egds" / "refs" / "main").write_text("ab" * 32 + "\n")
    return root


def in_a_thread(call: Any, timeout: float = 20.0) -> Any:
    """`call()` on a daemon thread: a read that would block forever fails the test instead of hanging it."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the read blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---- directory remote: what may be read -----------------------------------------------------------


def test_a_symbolic_link_inside_a_directory_remote_is_never_followed_even_to_a_file_inside_it(remote_dir: Path) -> None:
    (remote_dir / "egds" / "refs" / "other").write_text("cd" * 32 + "\n")
    (remote_dir / "egds" / "refs" / "main").unlink()
    (remote_dir / "egds" / "refs" / "main").symlink_to("other")
    with pytest.raises(RemoteError, match="symbolic link"):
        DirectoryRemote(remote_dir).get(REF_KEY, 128)


def test_a_key_below_a_symlinked_directory_is_refused(remote_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "main").write_text(SECRET)
    (remote_dir / "egds" / "refs" / "main").unlink()
    (remote_dir / "egds" / "refs").rmdir()
    (remote_dir / "egds" / "refs").symlink_to(outside)
    with pytest.raises(RemoteError, match="symbolic link") as raised:
        DirectoryRemote(remote_dir).get(REF_KEY, 128)
    assert SECRET not in str(raised.value)


def test_a_directory_remote_whose_root_is_a_symbolic_link_is_read_through_it(remote_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mounted").symlink_to(remote_dir)
    assert DirectoryRemote(tmp_path / "mounted").get(REF_KEY, 128) == ("ab" * 32 + "\n").encode()


def test_a_fifo_in_a_directory_remote_is_refused_at_once_instead_of_waited_on(remote_dir: Path) -> None:
    (remote_dir / "egds" / "refs" / "main").unlink()
    os.mkfifo(remote_dir / "egds" / "refs" / "main")
    with pytest.raises(RemoteError, match="not a regular file"):
        in_a_thread(lambda: DirectoryRemote(remote_dir).get(REF_KEY, 128))


def test_a_read_never_allocates_the_callers_bound_up_front(remote_dir: Path) -> None:
    # 10**15 bytes may be read (a manifest entry can claim that much); the file holds 65.
    assert DirectoryRemote(remote_dir).get(REF_KEY, 10**15) == ("ab" * 32 + "\n").encode()


def test_a_file_larger_than_the_bound_is_refused_without_being_read(remote_dir: Path) -> None:
    huge = remote_dir / "egds" / "manifests" / ("ef" * 32 + ".json")
    huge.parent.mkdir(parents=True)
    huge.write_bytes(b"")
    os.truncate(huge, 8 << 30)  # sparse: reading it would need 8 GiB
    with pytest.raises(RemoteError, match="larger than the 1,048,576 bytes"):
        in_a_thread(lambda: DirectoryRemote(remote_dir).get(manifest_key("ef" * 32), 1 << 20))


def test_the_inventory_lists_only_regular_files_and_follows_nothing(remote_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (remote_dir / "egds" / "objects").mkdir()
    (remote_dir / "egds" / "objects" / "ab").symlink_to(outside)
    (remote_dir / "egds" / "refs" / "linked").symlink_to(outside / "secret.txt")
    os.mkfifo(remote_dir / "egds" / "refs" / "fifo")
    inventory = in_a_thread(lambda: DirectoryRemote(remote_dir).inventory())
    assert set(inventory) == {REF_KEY}


def test_errors_about_a_ref_pointing_at_a_local_file_never_show_its_content(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "origin", cache="cache/rag", model="test-model")
    write_cache(repo.cache_path, make_chunks(20), make_embeddings(20, dim=4))
    repo.snapshot("v1")
    repo.remote_add("origin", str(tmp_path / "remote"))
    repo.push("origin")
    secret = tmp_path / "id_rsa"
    secret.write_text(SECRET * 3)
    (tmp_path / "remote" / "egds" / "refs" / "main").unlink()
    (tmp_path / "remote" / "egds" / "refs" / "main").symlink_to(secret)
    for call in (lambda: repo.pull("origin"), lambda: Repository.clone(str(tmp_path / "remote"), tmp_path / "c"),
                 lambda: repo.verify(remote="origin")):
        try:
            result = call()
        except EgdsError as exc:
            message = str(exc)
        else:
            message = " ".join(result.problems)
        assert "symbolic link" in message and SECRET[:10] not in message, message
    done = subprocess.run([str(EGDS), "-C", str(repo.root), "pull"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and SECRET[:10] not in done.stdout + done.stderr


def test_pull_from_a_remote_whose_ref_is_a_fifo_ends_with_an_error_instead_of_hanging(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "origin", cache="cache/rag", model="test-model")
    write_cache(repo.cache_path, make_chunks(20), make_embeddings(20, dim=4))
    repo.snapshot("v1")
    repo.remote_add("origin", str(tmp_path / "remote"))
    repo.push("origin")
    ref = tmp_path / "remote" / "egds" / "refs" / "main"
    ref.unlink()
    os.mkfifo(ref)
    done = subprocess.run([str(EGDS), "-C", str(repo.root), "pull"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not a regular file" in done.stderr, done.stderr


# ---- walking a manifest chain ---------------------------------------------------------------------


def long_chain(tmp_path: Path, versions: int) -> tuple[Path, list[str]]:
    """A directory remote whose history has `versions` versions (all with v1's content); their ids, oldest first."""
    repo = Repository.init(tmp_path / "origin", cache="cache/rag", model="test-model")
    write_cache(repo.cache_path, make_chunks(20), make_embeddings(20, dim=4))
    v1 = repo.snapshot("v1").id
    remote = tmp_path / "remote"
    repo.remote_add("origin", str(remote))
    repo.push("origin")
    document = json.loads((remote / manifest_key(v1)).read_bytes())
    ids = [v1]
    for version in range(2, versions + 1):
        document.update(version=version, parent=ids[-1], message=f"v{version}")
        data = json.dumps(document, indent=2).encode()
        ids.append(hash_bytes(data))
        (remote / manifest_key(ids[-1])).write_bytes(data)
    (remote / REF_KEY).write_text(f"{ids[-1]}\n")
    return remote, ids


class Counting:
    """Counts the manifest reads and the listings a DirectoryRemote serves."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gets: list[str] = []
        self.inventories = 0
        real_get, real_inventory = DirectoryRemote.get, DirectoryRemote.inventory
        lock = threading.Lock()

        def get(remote: DirectoryRemote, key: str, max_bytes: int) -> bytes | None:
            with lock:
                self.gets.append(key)
            return real_get(remote, key, max_bytes)

        def inventory(remote: DirectoryRemote) -> Any:
            self.inventories += 1
            return real_inventory(remote)

        monkeypatch.setattr(DirectoryRemote, "get", get)
        monkeypatch.setattr(DirectoryRemote, "inventory", inventory)

    def manifest_gets(self) -> list[str]:
        return [k for k in self.gets if k.startswith("egds/manifests/")]


class Recording:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def begin(self, description: str, total: int | None, unit: str = "items") -> None:
        self.events.append(("begin", (description, total)))

    def advance(self, amount: int = 1) -> None:
        self.events.append(("advance", amount))

    def end(self) -> None:
        self.events.append(("end", None))


def test_a_long_chain_is_fetched_in_batches_each_manifest_once_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = 1500
    remote, ids = long_chain(tmp_path, versions)
    counting = Counting(monkeypatch)
    progress = Recording()
    result = Repository.clone(str(remote), tmp_path / "copy", progress=progress)
    assert (result.version, result.id, result.manifests_fetched) == (versions, ids[-1], versions)
    assert sorted(counting.manifest_gets()) == sorted(manifest_key(i) for i in ids), "each manifest read once"
    assert counting.inventories == 1
    begun = [e for e in progress.events if e[0] == "begin" and "manifests" in e[1][0]]
    assert begun == [("begin", (f"fetching manifests from {remote}", versions))]
    start = progress.events.index(begun[0])
    stop = progress.events.index(("end", None), start)
    assert sum(a for kind, a in progress.events[start:stop] if kind == "advance") == versions
    clone = Repository.open(tmp_path / "copy")
    assert len(clone.log()) == versions and clone.verify().ok


def test_a_short_pull_or_clone_needs_no_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote, ids = long_chain(tmp_path, WALK_ALONE)
    counting = Counting(monkeypatch)
    Repository.clone(str(remote), tmp_path / "copy")
    assert counting.inventories == 0 and len(counting.manifest_gets()) == WALK_ALONE


def test_a_head_claiming_far_more_versions_than_the_remote_lists_is_refused_before_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote, ids = long_chain(tmp_path, 3)
    document = json.loads((remote / manifest_key(ids[-1])).read_bytes())
    parent = "56" * 32
    for version in range(10**9 - 99, 10**9 + 1):
        document.update(version=version, parent=parent, message="forged")
        data = json.dumps(document).encode()
        parent = hash_bytes(data)
        (remote / manifest_key(parent)).write_bytes(data)
    (remote / REF_KEY).write_text(f"{parent}\n")
    counting = Counting(monkeypatch)
    with pytest.raises(CorruptObject, match="claims version 1,000,000,000, but the remote lists only 103 manifests"):
        Repository.clone(str(remote), tmp_path / "copy")
    assert len(counting.manifest_gets()) <= WALK_ALONE + 1
    assert 103 + LISTING_LAG_ALLOWANCE < 10**9
    assert not (tmp_path / "copy").exists()


def test_a_damaged_manifest_the_chain_does_not_reach_does_not_fail_the_clone(tmp_path: Path) -> None:
    remote, ids = long_chain(tmp_path, WALK_ALONE + 20)
    (remote / manifest_key("0f" * 32)).write_bytes(b"listed, prefetched, damaged, and named by nothing")
    result = Repository.clone(str(remote), tmp_path / "copy")
    assert result.version == WALK_ALONE + 20
    assert not Repository.open(tmp_path / "copy").has_manifest("0f" * 32)


def test_a_pulled_manifest_naming_a_local_parent_with_another_version_number_is_refused(tmp_path: Path) -> None:
    remote, ids = long_chain(tmp_path, 2)
    Repository.clone(str(remote), tmp_path / "copy")
    document = json.loads((remote / manifest_key(ids[-1])).read_bytes())
    document.update(version=7, parent=ids[-1], message="skips versions 3 to 6")
    data = json.dumps(document).encode()
    (remote / manifest_key(hash_bytes(data))).write_bytes(data)
    (remote / REF_KEY).write_text(f"{hash_bytes(data)}\n")
    clone = Repository.open(tmp_path / "copy")
    with pytest.raises(CorruptObject, match=f"names parent {short(ids[-1])}, which is version 2 here"):
        clone.pull("origin")
    assert clone.head() == ids[-1]


def test_a_checkout_needing_objects_with_no_remote_to_fetch_them_says_to_add_one(tmp_path: Path) -> None:
    remote, ids = long_chain(tmp_path, 2)
    origin = Repository.open(tmp_path / "origin")
    key = origin.manifest(ids[0]).partitions[0].key
    Repository.clone(str(remote), tmp_path / "copy", partitions=[key])
    clone = Repository.open(tmp_path / "copy")
    clone.remote_remove("origin")
    with pytest.raises(EgdsError, match=r"add a remote that has them \(`egds remote add origin URL`\)"):
        clone.checkout("latest", tmp_path / "full")
