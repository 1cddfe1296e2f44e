"""Push never publishes what is wrong (issues 9 and 10, push side).

- the bytes that leave are the bytes that were checked: a damaged local object or manifest is never
  published, and the ref does not move;
- push writes only where it should: unknown URL schemes are refused, and a remote holding files egds
  did not write is left alone;
- the remote's own inventory decides what it holds: a remote that lost files gets them back before its
  ref moves, and on archive.org the ref waits until the listing shows every file (exit 75 meanwhile);
- one view of the repository per push, however snapshots interleave;
- concurrent pushers to a directory serialize on its lock: one wins, the other is told what to do, and
  the card always describes the ref; killed pushes' temp files are cleaned by the next push.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import RemoteBackend, dir_tree, flip_byte, make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.card import CARD_KEY, LATEST_KEY, REF_KEY, manifest_key, object_key
from egregora_ds.cli import app
from egregora_ds.errors import CorruptObject, MissingObject, UsageError
from egregora_ds.ids import PARQUET, short
from egregora_ds.push import ForeignRemote, ListingPending
from egregora_ds.remotes import HoldingsRecord
from egregora_ds.store.directory import DirectoryRemote, RemoteBusy
from egregora_ds.transfer import manifest_object_keys

ROWS, DIM = 30, 8
ANY_SIZE = 1 << 30


# ---- helpers -------------------------------------------------------------------------------------


def new_repo(root: Path) -> Repository:
    repo = Repository.init(root, cache="cache/rag", partitioning="month", model="test-model")
    write_cache(repo.cache_path, make_chunks(ROWS), make_embeddings(ROWS, dim=DIM), index={"newsletters": 6})
    repo.snapshot("v1")
    return repo


def edit(repo: Repository, text: str, row: int = 12) -> str:
    """Change one chunk (a 2024-03 one by default) and record it; the new version's id."""
    chunks, vectors = make_chunks(ROWS), make_embeddings(ROWS, dim=DIM)
    chunks[row]["text"] = text
    vectors[row] += 1.0
    write_cache(repo.cache_path, chunks, vectors, index={"newsletters": 6})
    result = repo.snapshot(text)
    assert result.created
    return result.id


def chain_keys(repo: Repository, head: str) -> set[str]:
    keys: set[str] = set()
    current: str | None = head
    while current is not None:
        manifest = repo.manifest(current)
        keys.add(manifest_key(current))
        keys |= {object_key(i, s) for i, s in manifest_object_keys(manifest)}
        current = manifest.parent
    return keys


def new_object_key(repo: Repository, new: str, old: str) -> str:
    (key,) = {object_key(i, s) for i, s in manifest_object_keys(repo.manifest(new))} - chain_keys(repo, old)
    return key


def local_path(repo: Repository, key: str) -> Path:
    name = key.rsplit("/", 1)[-1]
    stem, _, ext = name.partition(".")
    return repo.store.object_path(stem, f".{ext}")


def remote_ref(backend: RemoteBackend) -> str | None:
    data = backend.remote().get(REF_KEY, ANY_SIZE)
    return None if data is None else data.decode().strip()


def one_line_error(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code not in (0, 70), (result.exit_code, result.output)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egds: error: "), result.stderr
    return result.exit_code, lines[0].removeprefix("egds: error: ")


def assert_consistent(backend: RemoteBackend, repo: Repository) -> str:
    """The remote's ref names data it holds in full, and its card and manifest.json describe that ref."""
    ref = remote_ref(backend)
    assert ref is not None
    stored = backend.stored()
    missing = chain_keys(repo, ref) - set(stored)
    assert not missing, f"the ref names data the remote lacks: {sorted(missing)[:3]}"
    latest = json.loads(stored[LATEST_KEY])
    assert latest["id"] == ref
    assert latest["manifest"]["version"] == repo.manifest(ref).version
    assert set(latest["files"].values()) <= set(stored)
    assert f"(`{ref}`)" in stored[CARD_KEY].decode()
    return ref


def clone_matches(backend: RemoteBackend, target: Path, head: str) -> None:
    with backend.anonymous():
        Repository.clone(backend.url, target)
    clone = Repository.open(target)
    assert clone.head() == head
    assert clone.verify().ok


class Hook:
    """A Progress whose first `begin` (push calls it after planning, before the first upload) runs `action`."""

    def __init__(self, action: Any) -> None:
        self.action, self.fired = action, False

    def begin(self, description: str, total: int | None, unit: str = "items") -> None:
        if not self.fired:
            self.fired = True
            self.action()

    def advance(self, amount: int = 1) -> None:
        pass

    def end(self) -> None:
        pass


@pytest.fixture
def pushed(remote_backend: RemoteBackend, tmp_path: Path) -> tuple[Repository, RemoteBackend, str]:
    repo = new_repo(tmp_path / "origin")
    repo.remote_add("origin", remote_backend.url)
    repo.push("origin")
    remote_backend.settle()
    return repo, remote_backend, repo.head()  # type: ignore[return-value]


two_backends = pytest.mark.parametrize("remote_backend", ["directory", "ia"], indirect=True)


# ---- issue 9.1: what leaves is what was checked ----------------------------------------------------------


@two_backends
def test_a_push_of_a_damaged_local_object_fails_naming_it_and_the_remote_never_holds_its_bytes(pushed, tmp_path):
    repo, backend, v1 = pushed
    v2 = edit(repo, "a new version")
    key = new_object_key(repo, v2, v1)
    object_id = key.rsplit("/", 1)[-1].removesuffix(PARQUET)
    flip_byte(local_path(repo, key))
    damaged = local_path(repo, key).read_bytes()

    with pytest.raises(CorruptObject) as raised:
        repo.push("origin")
    message = str(raised.value)
    assert "\n" not in message and short(object_id) in message and "`egds verify`" in message and "egds pull" in message
    assert remote_ref(backend) == v1, "the ref must not move"
    stored = backend.stored()
    assert key not in stored and damaged not in stored.values()
    assert manifest_key(v2) not in stored
    if backend.path is not None:
        assert not list(backend.path.rglob("*.tmp")), "no half-written temp file either"

    code, line = one_line_error(repo.root, "push", "origin")
    assert code == 1 and short(object_id) in line and "`egds verify`" in line
    assert remote_ref(backend) == v1 and key not in backend.stored()

    flip_byte(local_path(repo, key))  # restored from "another copy": the push now goes through
    repo.push("origin")
    backend.settle()
    assert assert_consistent(backend, repo) == v2


@two_backends
def test_a_manifest_damaged_after_the_plan_is_refused_as_it_is_read_for_upload(pushed, tmp_path):
    repo, backend, v1 = pushed
    v2 = edit(repo, "a new version")
    manifest_file = repo.store.manifest_path(v2)
    with pytest.raises(CorruptObject) as raised:
        repo.push("origin", progress=Hook(lambda: flip_byte(manifest_file)))
    assert short(v2) in str(raised.value) and "egds verify" in str(raised.value)
    assert remote_ref(backend) == v1
    assert manifest_key(v2) not in backend.stored()


# ---- issue 9.5: push writes only where it should -------------------------------------------------------


@pytest.mark.parametrize("url", ["ai:my-dataset", "s3:bucket", "IA:my-dataset", "gs:b/x", "C:\\data"])
def test_remote_add_refuses_an_unknown_url_scheme_and_lists_the_forms_that_work(filled_repo: Repository, url: str):
    with pytest.raises(UsageError) as raised:
        filled_repo.remote_add("t", url)
    message = str(raised.value)
    assert "\n" not in message and repr(url) in message
    assert "ia:IDENTIFIER" in message and "file:///" in message and f"./{url}" in message
    assert filled_repo.remote_list() == {}
    code, line = one_line_error(filled_repo.root, "remote", "add", "t", url)
    assert code == 2 and "unknown remote URL scheme" in line
    assert filled_repo.remote_list() == {}


def test_a_folder_whose_name_has_a_colon_is_a_remote_when_written_as_dot_slash_name(filled_repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = filled_repo.remote_add("t", "./ai:my-dataset")
    assert config.url == str(tmp_path / "ai:my-dataset")
    filled_repo.push("t")
    assert (tmp_path / "ai:my-dataset" / "egds" / "refs" / "main").is_file()


def test_a_push_to_a_directory_holding_files_egds_did_not_write_is_refused_and_changes_nothing(filled_repo, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "README.md").write_text("# my notes\n")
    (shared / "manifest.json").write_text('{"mine": true}\n')
    (shared / "data").mkdir()
    (shared / "data" / "table.csv").write_text("a,b\n")
    before = dir_tree(shared)
    filled_repo.remote_add("shared", str(shared))
    with pytest.raises(ForeignRemote) as raised:
        filled_repo.push("shared")
    message = str(raised.value)
    assert "\n" not in message and "README.md" in message and "did not write" in message
    assert "egds remote remove shared" in message
    assert dir_tree(shared) == before and not (shared / "egds").exists()
    code, _ = one_line_error(filled_repo.root, "push", "shared")
    assert code == 2 and dir_tree(shared) == before
    with pytest.raises(ForeignRemote):  # a dry run says so too
        filled_repo.push("shared", dry_run=True)


def test_remote_add_here_then_push_here_refuses_and_keeps_the_projects_readme(tmp_path):
    project = tmp_path / "project"
    repo = new_repo(project)
    (project / "README.md").write_text("# The project's own README\n")
    runner = CliRunner()
    assert runner.invoke(app, ["-C", str(project), "remote", "add", "here", str(project)]).exit_code == 0
    before = dir_tree(project)
    code, line = one_line_error(project, "push", "here")
    assert code == 2 and "did not write" in line
    assert (project / "README.md").read_text() == "# The project's own README\n"
    assert dir_tree(project) == before and not (project / "egds").exists()
    assert repo.store.read_ref("remotes/here/main") is None


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_a_push_to_an_ia_item_holding_files_egds_did_not_write_is_refused_without_any_upload(remote_backend, filled_repo):
    emu, identifier = remote_backend.emu, remote_backend.identifier
    emu.put_file(identifier, "README.md", b"# someone else's item\n", metadata={"mediatype": "texts"})
    emu.put_file(identifier, "scan.pdf", b"%PDF")
    filled_repo.remote_add("origin", remote_backend.url)
    with pytest.raises(ForeignRemote) as raised:
        filled_repo.push("origin")
    assert "new item identifier" in str(raised.value) and "README.md" in str(raised.value)
    assert [r for r in emu.requests if r.method != "GET"] == []
    assert emu.get_file(identifier, "README.md") == b"# someone else's item\n"


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_an_ia_item_holding_only_archive_orgs_own_files_is_pushed_to(remote_backend, filled_repo):
    emu, identifier = remote_backend.emu, remote_backend.identifier
    for own in (f"{identifier}_files.xml", f"{identifier}_meta.xml", "history/files/README.md.~1~"):
        emu.put_file(identifier, own, b"<archive.org's own>")
    filled_repo.remote_add("origin", remote_backend.url)
    assert filled_repo.push("origin").ref_updated
    assert emu.get_file(identifier, f"{identifier}_files.xml") == b"<archive.org's own>"


@two_backends
def test_an_egds_remote_with_a_file_added_by_hand_is_still_pushed_to_and_the_file_kept(pushed):
    repo, backend, _ = pushed
    backend.put_raw("notes.txt", b"added by hand")
    v2 = edit(repo, "a new version")
    assert repo.push("origin").ref_updated
    backend.settle()
    assert assert_consistent(backend, repo) == v2
    assert backend.stored()["notes.txt"] == b"added by hand"


@pytest.mark.parametrize("remote_backend", ["directory", "ia", "memory"], indirect=True)
def test_a_first_push_interrupted_before_its_ref_is_resumed(remote_backend, filled_repo):
    """A remote holding only egds/ files (a first push stopped before the ref) is ours to finish."""
    head = filled_repo.head()
    key = next(iter(chain_keys(filled_repo, head) - {manifest_key(head)}))
    remote_backend.put_raw(key, local_path(filled_repo, key).read_bytes())
    filled_repo.remote_add("origin", remote_backend.url)
    result = filled_repo.push("origin")
    assert result.ref_updated and result.objects_skipped == 1
    remote_backend.settle()
    assert_consistent(remote_backend, filled_repo)


# ---- issue 10.1: the remote's inventory decides --------------------------------------------------------


@pytest.mark.parametrize("remote_backend", ["directory", "ia", "memory"], indirect=True)
@pytest.mark.parametrize("new_version", [False, True], ids=["same-version", "new-version"])
def test_a_remote_that_lost_its_files_gets_them_back_before_its_ref_moves(pushed, tmp_path, new_version):
    repo, backend, v1 = pushed
    for key in list(backend.stored()):
        if key.startswith(("egds/objects/", "egds/manifests/")):
            backend.delete_raw(key)  # a disk replaced, files removed by hand: the record still lists them
    head = edit(repo, "after the loss") if new_version else v1
    result = repo.push("origin")
    assert result.objects_uploaded == len({k for k in chain_keys(repo, head) if k.startswith("egds/objects/")})
    assert result.ref_updated == new_version
    backend.settle()
    assert assert_consistent(backend, repo) == head
    clone_matches(backend, tmp_path / "clone", head)
    again = repo.push("origin")
    assert again.objects_uploaded == again.manifests_uploaded == 0 and not again.card_uploaded


@pytest.mark.parametrize("remote_backend", ["directory"], indirect=True)
def test_a_directory_remote_wiped_whole_is_pushed_again_in_full(pushed, tmp_path):
    repo, backend, v1 = pushed
    shutil.rmtree(backend.path)
    result = repo.push("origin")
    assert result.ref_updated and result.objects_uploaded == 7 and result.manifests_uploaded == 1
    assert assert_consistent(backend, repo) == v1
    clone_matches(backend, tmp_path / "clone", v1)


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_an_upload_archive_org_never_lists_is_waited_for_then_sent_again_once_older_than_the_grace(remote_backend, filled_repo, tmp_path):
    emu, identifier = remote_backend.emu, remote_backend.identifier
    emu.metadata_lag = 3600.0
    head = filled_repo.head()
    filled_repo.remote_add("origin", remote_backend.url)
    with pytest.raises(ListingPending) as raised:
        filled_repo.push("origin", wait=0)
    assert raised.value.exit_code == 75 and "egds push origin" in str(raised.value)
    lost = next(k for k in chain_keys(filled_repo, head) if k.endswith(PARQUET))
    remote_backend.delete_raw(lost)  # its ingest task failed: archive.org will never list it
    emu.settle()

    start = len(emu.requests)
    with pytest.raises(ListingPending) as raised:  # recent: not sent again, and the ref still waits
        filled_repo.push("origin", wait=0)
    assert lost in str(raised.value) and "1 of the files" in str(raised.value)
    assert [r for r in emu.requests[start:] if r.method != "GET"] == []
    assert remote_ref(remote_backend) is None

    start = len(emu.requests)
    with pytest.raises(ListingPending):  # older than the grace: a failed ingest, sent again (only it)
        filled_repo.push("origin", wait=0, ingest_grace=0)
    assert [r.path.removeprefix(f"/{identifier}/") for r in emu.requests[start:] if r.method == "PUT"] == [lost]
    emu.settle()
    assert filled_repo.push("origin", wait=0).ref_updated
    assert_consistent(remote_backend, filled_repo)
    clone_matches(remote_backend, tmp_path / "clone", head)


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_a_push_waits_for_a_short_listing_lag_then_moves_the_ref(remote_backend, filled_repo):
    emu = remote_backend.emu
    emu.metadata_lag = 0.3
    filled_repo.remote_add("origin", remote_backend.url)
    result = filled_repo.push("origin", wait=60)
    assert result.ref_updated
    listings = [r for r in emu.requests if r.path == f"/metadata/{remote_backend.identifier}"]
    assert len(listings) >= 2  # the plan's, then looks until everything was listed
    emu.settle()
    assert_consistent(remote_backend, filled_repo)


@pytest.mark.parametrize("remote_backend", ["ia"], indirect=True)
def test_the_holdings_record_notes_uploads_as_unconfirmed_until_the_listing_shows_them(remote_backend, filled_repo):
    emu = remote_backend.emu
    emu.metadata_lag = 3600.0
    head = filled_repo.head()
    filled_repo.remote_add("origin", remote_backend.url)
    record = HoldingsRecord(filled_repo.remotes.record_dir / "origin.known")
    with pytest.raises(ListingPending):
        filled_repo.push("origin", wait=0)
    lines = record.path.read_text().splitlines()
    assert lines[0].startswith("# egds holdings record 2")
    entries = record.entries()
    assert set(entries) == chain_keys(filled_repo, head)
    assert {e.state for e in entries.values()} == {"U"} and all(abs(e.since - time.time()) < 600 for e in entries.values())
    assert all(line.split(" ", 2)[0] == "U" and line.split(" ", 2)[2] in entries for line in lines[1:])
    emu.settle()
    filled_repo.push("origin", wait=0)
    assert {e.state for e in record.entries().values()} == {"C"}
    assert record.load() == set(entries)
    size = record.path.stat().st_size
    filled_repo.push("origin", wait=0)
    assert record.path.stat().st_size == size, "an unchanged remote adds nothing to the record"


def test_a_holdings_record_of_the_first_format_reads_as_unconfirmed_uploads(tmp_path):
    path = tmp_path / "origin.known"
    path.write_text("# an old record\negds/objects/ab/x.parquet\nREADME.md\n")
    record = HoldingsRecord(path)
    assert {k: (e.state, e.since) for k, e in record.entries().items()} == {
        "egds/objects/ab/x.parquet": ("U", 0.0), "README.md": ("U", 0.0)}
    record.record("A", ["egds/objects/ab/x.parquet"])
    assert record.load() == {"README.md"}


# ---- issue 10.11: one view of the repository -------------------------------------------------------------


@two_backends
def test_a_snapshot_recorded_during_a_push_does_not_leak_into_what_it_publishes(pushed, tmp_path):
    repo, backend, v1 = pushed
    v2 = edit(repo, "pushed version")
    recorded: list[str] = []

    def snapshot_meanwhile() -> None:
        # Another process's snapshot, at the worst moment: after the plan, before any upload.
        other = threading.Thread(target=lambda: recorded.append(edit(Repository.open(repo.root), "recorded meanwhile", row=25)))
        other.start()
        other.join()

    result = repo.push("origin", progress=Hook(snapshot_meanwhile))
    assert recorded and repo.head() == recorded[0]  # the snapshot did happen
    assert result.ref == v2 and result.version == 2
    backend.settle()
    assert assert_consistent(backend, repo) == v2
    assert "**Latest version:** v2" in backend.stored()[CARD_KEY].decode()
    repo.push("origin")  # the next push publishes v3, consistently
    backend.settle()
    assert assert_consistent(backend, repo) == recorded[0]


# ---- issue 10.12: two pushers, one directory ----------------------------------------------------------


RACER = """
import sys, time
from pathlib import Path
from egregora_ds.cli import app
Path(sys.argv[3]).write_text("ready")
go, deadline = Path(sys.argv[1]), time.monotonic() + 120
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit(99)
    time.sleep(0.002)
app(["-C", sys.argv[2], "push", "origin"], prog_name="egds")
"""


def wait_for(paths: list[Path], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"timed out waiting for {paths}"
        time.sleep(0.01)


@pytest.mark.slow
def test_two_clones_pushing_to_one_directory_at_once_never_lose_an_update_and_the_card_follows_the_ref(tmp_path):
    a = new_repo(tmp_path / "a")
    templates = {}
    for name, row in (("b", 3), ("c", 27)):  # two writers, each with its own v2: diverged histories
        shutil.copytree(a.root, tmp_path / name)
        writer = Repository.open(tmp_path / name)
        templates[name] = (tmp_path / name, edit(writer, f"written by {name}", row=row))
    trials = int(os.environ.get("EGDS_RACE_TRIALS", "6"))
    wins = {"b": 0, "c": 0}
    for trial in range(trials):
        remote = tmp_path / f"remote-{trial}"
        a.remote_add(f"r{trial}", str(remote))
        a.push(f"r{trial}")  # the remote holds v1
        roots = {}
        for name, (template, _) in templates.items():
            roots[name] = tmp_path / f"{name}-{trial}"
            shutil.copytree(template, roots[name])
            Repository.open(roots[name]).remote_add("origin", str(remote))
        go = tmp_path / f"go-{trial}"
        ready = {name: tmp_path / f"ready-{name}-{trial}" for name in roots}
        racers = {
            name: subprocess.Popen([sys.executable, "-c", RACER, str(go), str(root), str(ready[name])],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, root in roots.items()
        }
        try:
            wait_for(list(ready.values()))
            go.write_text("go")
            outcomes = {name: (p.wait(timeout=120), p.stderr.read()) for name, p in racers.items()}  # type: ignore[union-attr]
        finally:
            for p in racers.values():
                if p.poll() is None:
                    p.kill()
        codes = sorted(code for code, _ in outcomes.values())
        assert codes == [0, 1], (trial, outcomes)
        winner = next(name for name, (code, _) in outcomes.items() if code == 0)
        loser = next(name for name in outcomes if name != winner)
        wins[winner] += 1
        lines = outcomes[loser][1].strip().splitlines()
        assert len(lines) == 1 and "diverged" in lines[0] and "egds clone" in lines[0], (trial, lines)
        backend = RemoteBackend("directory", str(remote), path=remote)
        assert assert_consistent(backend, Repository.open(roots[winner])) == templates[winner][1], trial
        assert not list(remote.rglob("*.tmp")), trial
    assert sum(wins.values()) == trials


@pytest.mark.parametrize("remote_backend", ["directory"], indirect=True)
def test_a_push_waits_for_another_push_holding_the_directory_lock_and_gives_up_with_exit_75(pushed, monkeypatch):
    repo, backend, v1 = pushed
    edit(repo, "a new version")
    before = backend.stored()
    monkeypatch.setenv("EGDS_REMOTE_LOCK_WAIT", "0")
    with DirectoryRemote(backend.path).locked():  # another pusher, mid-push
        with pytest.raises(RemoteBusy) as raised:
            repo.push("origin")
        assert raised.value.exit_code == 75 and "wait for it to finish" in str(raised.value)
        assert str(os.getpid()) in str(raised.value)
        code, _ = one_line_error(repo.root, "push", "origin")
        assert code == 75
        assert backend.stored() == before
    assert repo.push("origin").ref_updated  # once the other is done


def test_a_directory_ref_swap_holds_the_lock_across_read_compare_and_rename(tmp_path, monkeypatch):
    """The swap waits for the lock: a second swapper, blocked until the first is done, sees its ref."""
    root = tmp_path / "remote"
    first, second = DirectoryRemote(root), DirectoryRemote(root, lock_wait=60)
    outcome: list[BaseException | None] = []
    with first.locked():
        first.put_ref(REF_KEY, b"a" * 64 + b"\n", None)
        racer = threading.Thread(target=lambda: outcome.append(_swap(second, b"b" * 64 + b"\n", None)))
        racer.start()
        time.sleep(0.2)  # not a timing assertion: the racer is blocked on the lock whatever the delay
        assert racer.is_alive() and not outcome
    racer.join(timeout=60)
    assert outcome and outcome[0] is not None and "changed while pushing" in str(outcome[0])
    assert second.get(REF_KEY, 4096) == b"a" * 64 + b"\n"


def _swap(remote: DirectoryRemote, data: bytes, expected: bytes | None) -> BaseException | None:
    try:
        remote.put_ref(REF_KEY, data, expected)
    except Exception as exc:  # noqa: BLE001 - handed to the test thread
        return exc
    return None


# ---- issue 10.16: temp files of killed pushes ------------------------------------------------------------


SLOW_PUSH = """
import sys, time
from pathlib import Path
from egregora_ds.store import base
original = base.UploadSource.chunks
def chunks(self, block=base.READ_BLOCK):
    for n, piece in enumerate(original(self, 256)):  # small pieces: the temp file grows, then stalls
        yield piece
        if n == 1:
            Path(sys.argv[2]).write_text("uploading")
            time.sleep(300)
base.UploadSource.chunks = chunks
from egregora_ds import Repository
Repository.open(sys.argv[1]).push("origin")
"""


@pytest.mark.parametrize("remote_backend", ["directory"], indirect=True)
def test_a_push_killed_mid_upload_leaves_a_temp_file_that_the_next_push_removes(pushed, tmp_path):
    repo, backend, _ = pushed
    v2 = edit(repo, "a new version")
    started = tmp_path / "started"
    victim = subprocess.Popen([sys.executable, "-c", SLOW_PUSH, str(repo.root), str(started)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for([started])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    left = list(backend.path.rglob(".*.tmp"))
    assert left, "the kill must leave a temp file behind for this test to mean anything"
    result = repo.push("origin")
    assert result.ref_updated and result.temp_files_removed == len(left)
    assert not list(backend.path.rglob("*.tmp"))
    assert assert_consistent(backend, repo) == v2


@pytest.mark.parametrize("remote_backend", ["directory"], indirect=True)
def test_an_up_to_date_push_still_removes_stale_temp_files_of_egds_and_keeps_other_dotfiles(pushed):
    repo, backend, v1 = pushed
    key = next(k for k in chain_keys(repo, v1) if k.endswith(PARQUET))
    folder, name = key.rsplit("/", 1)
    ours = [backend.path / folder / f".{name}.a1b2c3d4.tmp", backend.path / ".README.md.x_y9z8w7.tmp",
            backend.path / "egds" / "refs" / ".main.k3j4h5g6.tmp", backend.path / "egds" / ".card.json.q1w2e3r4.tmp"]
    for path in ours:
        path.write_bytes(b"left by a killed push")
    theirs = [backend.path / ".notes.tmp", backend.path / "egds" / ".my-own.tmp"]
    for path in theirs:
        path.write_bytes(b"not egds's")
    result = repo.push("origin")
    assert result.temp_files_removed == 4 and not result.ref_updated and result.objects_uploaded == 0
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


# ---- the rest of their kind ---------------------------------------------------------------------------


@pytest.mark.parametrize("remote_backend", ["directory", "ia"], indirect=True)
def test_a_partial_clone_pushes_to_its_origin_without_the_objects_it_did_not_fetch(pushed, tmp_path):
    repo, backend, v1 = pushed
    partition = repo.manifest(v1).partitions[0].key
    with backend.anonymous():
        Repository.clone(backend.url, tmp_path / "partial", partitions=[partition])
    partial = Repository.open(tmp_path / "partial")
    mark = backend.mark()
    result = partial.push("origin")  # up to date: the remote holds what this clone did not fetch
    assert result.objects_uploaded == 0 and not result.ref_updated
    assert backend.writes_since(mark) == []
    partial.remote_add("elsewhere", str(tmp_path / "elsewhere"))
    with pytest.raises(MissingObject, match="egds pull"):  # but it cannot give them to another remote
        partial.push("elsewhere")


@pytest.mark.parametrize("remote_backend", ["directory", "memory"], indirect=True)
def test_a_push_stopped_between_the_ref_and_the_card_is_finished_by_the_next_push(pushed, monkeypatch):
    repo, backend, v1 = pushed
    v2 = edit(repo, "a new version")
    remote_class = type(backend.remote())
    original = remote_class.put

    def put(self: Any, key: str, source: Any) -> None:
        if key == CARD_KEY:
            raise OSError("killed")  # the push dies right after moving the ref
        original(self, key, source)

    monkeypatch.setattr(remote_class, "put", put)
    with pytest.raises(OSError):
        repo.push("origin")
    monkeypatch.setattr(remote_class, "put", original)
    assert remote_ref(backend) == v2 and json.loads(backend.stored()[LATEST_KEY])["id"] == v1
    result = repo.push("origin")
    assert result.card_uploaded and not result.ref_updated and result.objects_uploaded == 0
    assert assert_consistent(backend, repo) == v2


# ---- the holdings record as a log ---------------------------------------------------------------------

_KEYS = st.sampled_from(["README.md", "manifest.json", "egds/refs/main", "egds/objects/ab/" + "ab" * 32 + ".parquet",
                         "egds/manifests/" + "cd" * 32 + ".json"])
_OBSERVATIONS = st.lists(st.tuples(st.sampled_from(["C", "U", "A"]), st.lists(_KEYS, max_size=3),
                                   st.integers(0, 2**33)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(observations=_OBSERVATIONS)
def test_the_holdings_record_reads_back_the_last_observation_of_every_key(tmp_path_factory, observations):
    record = HoldingsRecord(tmp_path_factory.mktemp("record") / "origin.known")
    expected: dict[str, tuple[str, float]] = {}
    for state, keys, when in observations:
        record.record(state, keys, when=when)
        expected.update({key: (state, float(when)) for key in keys})
    assert {k: (e.state, e.since) for k, e in record.entries().items()} == expected
    assert record.load() == {k for k, (state, _) in expected.items() if state != "A"}


# ---- kill -9 at random moments of a push to a directory -------------------------------------------------

KILLABLE_PUSH = """
import sys
from pathlib import Path
from egregora_ds import Repository
repo = Repository.open(sys.argv[1])
Path(sys.argv[2]).write_text("ready")
repo.push("origin")
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["directory", "ia"])
def test_a_push_killed_at_random_moments_is_finished_by_a_re_run_identical_to_a_clean_push(tmp_path, monkeypatch, kind):
    """EGDS_KILL_TRIALS (default 5) kills per backend; the documented long run uses 30 or more."""
    import random

    from egregora_ds.testing.ia_emulator import IAEmulator

    rows = 2400
    repo = Repository.init(tmp_path / "origin", cache="cache/rag", partitioning="month", model="test-model")
    write_cache(repo.cache_path, make_chunks(rows, months=24), make_embeddings(rows, dim=64), index={"n": 24})
    repo.snapshot("v1")
    trials = int(os.environ.get("EGDS_KILL_TRIALS", "5"))
    rng = random.Random(int(os.environ.get("EGDS_KILL_SEED", "7")))
    with IAEmulator() as emu:
        for name, value in (("EGDS_IA_ENDPOINT", emu.endpoint), ("IA_ACCESS_KEY_ID", "test-access"),
                            ("IA_SECRET_ACCESS_KEY", "test-secret"), ("EGDS_RETRY_BACKOFF", "0.001")):
            monkeypatch.setenv(name, value)

        def backend(label: str) -> RemoteBackend:
            if kind == "ia":
                return RemoteBackend("ia", f"ia:egds-kill-{label}", emu=emu, monkeypatch=monkeypatch)
            return RemoteBackend("directory", str(tmp_path / label), path=tmp_path / label)

        def files(b: RemoteBackend) -> dict[str, bytes]:
            found = {k: v for k, v in b.stored().items() if k != "egds/lock"}  # the lock holds a pid
            if CARD_KEY in found:  # the card names its own remote
                found[CARD_KEY] = found[CARD_KEY].replace(b.url.encode(), b"URL").replace(b.identifier.encode(), b"ID")
            return found

        clean = backend("clean")
        repo.remote_add("clean", clean.url)
        repo.push("clean")
        killed_mid_push = 0
        for trial in range(trials):
            target = backend(f"trial-{trial}")
            if "origin" in repo.remote_list():
                repo.remote_remove("origin")
            repo.remote_add("origin", target.url)
            ready = tmp_path / f"ready-{trial}"
            victim = subprocess.Popen([sys.executable, "-c", KILLABLE_PUSH, str(repo.root), str(ready)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                wait_for([ready])
                time.sleep(rng.uniform(0, 0.15))  # a push of this repository takes ~0.1-0.5 s here
                os.kill(victim.pid, signal.SIGKILL)
                code = victim.wait(timeout=60)
            finally:
                if victim.poll() is None:
                    victim.kill()
            killed_mid_push += code == -signal.SIGKILL
            ref = remote_ref(target)
            if ref is not None:  # whatever the moment, a ref never names data the remote lacks
                assert chain_keys(repo, ref) <= set(target.stored()), trial
            repo.push("origin")
            # Bit-identical to a clean push, and (directory) no temp file left.
            assert files(target) == files(clean), trial
            if target.path is not None:
                assert not list(target.path.rglob("*.tmp")), trial
        assert emu.errors == []
    assert killed_mid_push >= 1, "no kill landed during a push: the campaign tested nothing"


@two_backends
def test_a_push_from_a_clone_keeps_the_title_and_license_the_publisher_gave_the_card(remote_backend, tmp_path):
    publisher = new_repo(tmp_path / "publisher")
    publisher.remote_add("origin", remote_backend.url, title="Egregora embeddings", license="CC-BY-4.0",
                         description="Newsletter chunks.")
    publisher.push("origin")
    remote_backend.settle()
    with remote_backend.anonymous():
        Repository.clone(remote_backend.url, tmp_path / "collaborator")
    collaborator = Repository.open(tmp_path / "collaborator")
    assert collaborator.remote_list()["origin"].title == ""  # a clone knows only the URL
    v2 = edit(collaborator, "a collaborator's version")
    collaborator.push("origin")
    remote_backend.settle()
    assert assert_consistent(remote_backend, collaborator) == v2
    card = remote_backend.stored()[CARD_KEY].decode()
    assert card.startswith("# Egregora embeddings\n") and "**License:** CC-BY-4.0" in card and "Newsletter chunks." in card
    assert "| v2 |" in card
