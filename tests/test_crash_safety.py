"""Crash safety with real processes and SIGKILL.

Kill points are deterministic where it matters: a child process wraps `os.replace` (every durable
step of egds - object commit, manifest, ref, state.json, cache journal, cache renames - is one) and
pauses before or after the N-th call until the test kills it. Other kills poll for files appearing
in `.egds/tmp/`, `.egds/objects/`, `.egds/manifests/` or the cache, or wait a fixed delay, on a
20k x 64 cache that takes a moment to write.

Whatever the kill point: `verify` passes, the latest version is the old or the new one, a later
snapshot/checkout succeeds, `gc` removes every leftover temp file, and the cache read with plain
pickle/json is the old or the new version (a mix only while a journal says how to finish it, and
the next egds command finishes it).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import load_cache, make_chunks, make_embeddings, repo_tree, write_cache
from egregora_ds import Repository
from egregora_ds.errors import LockHeld

EGDS = Path(sys.executable).with_name("egds")
TIMEOUT = 30.0  # upper bound for any single wait on a child process

CHILD = r'''
import json, os, sys, threading, time
from pathlib import Path

spec = json.loads(sys.argv[1])
real_replace = os.replace
lock = threading.Lock()
calls = 0


def pause(where):
    """Tell the test where we are (atomically), then wait for `go` (or to be killed)."""
    with open(spec["marker"] + ".part", "w") as f:
        f.write(where)
    real_replace(spec["marker"] + ".part", spec["marker"])
    deadline = time.monotonic() + 60
    while not (spec.get("go") and os.path.exists(spec["go"])):
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.002)


def replace(src, dst, *args, **kwargs):
    global calls
    with lock:
        calls += 1
        n = calls
    if n == spec.get("pause_at") and spec.get("when") == "before":
        pause(f"before replace {n}: {src} -> {dst}")
    real_replace(src, dst, *args, **kwargs)
    if n == spec.get("pause_at") and spec.get("when") == "after":
        pause(f"after replace {n}: {src} -> {dst}")


os.replace = replace
from egregora_ds import Repository

repo = Repository.open(spec["root"])
if spec["op"] == "snapshot":
    repo.snapshot("from a child process")
elif spec["op"] == "checkout":
    repo.checkout(spec["rev"], spec.get("cache"), force=spec.get("force", False))
elif spec["op"] == "hold-lock":
    with repo.store.locked():
        pause("holding the lock")
if spec.get("count_file"):
    Path(spec["count_file"]).write_text(str(calls))
'''


# ---- child processes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def child_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("child") / "child.py"
    path.write_text(CHILD)
    return path


@contextlib.contextmanager
def running(script: Path, workdir: Path, **spec: Any) -> Iterator[subprocess.Popen]:
    """A child process running `spec`; always killed and reaped on the way out."""
    spec = {"marker": str(workdir / "marker"), **spec}
    with open(workdir / "child.stderr", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), json.dumps(spec)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)


def child_error(workdir: Path) -> str:
    path = workdir / "child.stderr"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = TIMEOUT) -> bool:
    """True once `condition()` holds; False if the child exits first. Fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.001)
    pytest.fail(f"timed out after {timeout} s waiting for the child")


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=TIMEOUT)


def pause_and_kill(script: Path, workdir: Path, n: int, when: str, **spec: Any) -> str:
    """Run the child until it is about to do (or has just done) its n-th rename, then SIGKILL it."""
    marker = workdir / "marker"
    with running(script, workdir, pause_at=n, when=when, **spec) as proc:
        if not wait_until(marker.exists, proc):
            pytest.fail(f"child ended (rc {proc.returncode}) before rename {n}: {child_error(workdir)}")
        kill(proc)
        assert proc.returncode == -9
    return marker.read_text()


def count_renames(script: Path, workdir: Path, **spec: Any) -> int:
    count_file = workdir / "count"
    with running(script, workdir, count_file=str(count_file), **spec) as proc:
        assert proc.wait(timeout=TIMEOUT) == 0, child_error(workdir)
    return int(count_file.read_text())


# ---- caches and checks ----------------------------------------------------------------------------


def plain_state(cache: Path) -> tuple[np.ndarray, list, Any, dict]:
    """The cache as the pipeline reads it: plain pickle and json (no egds recovery)."""
    pickled, metadata, index = load_cache(cache)
    extras = {k: v for k, v in pickled.items() if k != "embeddings"}
    return pickled["embeddings"], metadata["chunks"], index, extras


def same(state: tuple, expected: tuple) -> bool:
    array, chunks, index, extras = state
    return (
        array.shape == expected[0].shape
        and array.dtype == expected[0].dtype
        and bool((array.view(np.uint8) == expected[0].view(np.uint8)).all())
        and chunks == expected[1]
        and index == expected[2]
        and extras == expected[3]
    )


def leftover_temps(root: Path) -> list[Path]:
    base = root / ".egds"
    return sorted(p for p in base.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or p.parent.name == "tmp"))


def cache_leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith((".egds-tmp", ".tmp")) or p.name.startswith(".egds"))


def later_chunks(n: int, first_id: int, month: str) -> list[dict]:
    chunks = make_chunks(n, months=1, seed=1)
    for chunk in chunks:
        chunk["chunk_id"] += first_id
        chunk["newsletter_date"] = chunk["newsletter_date"].replace("2024-01", month)
        chunk["newsletter_path"] = chunk["newsletter_path"].replace("2024-01", month)
    return chunks


def check_after_killed_snapshot(root: Path, v1: str, new: tuple, scratch: Path) -> str:
    """The repo is sound and at v1 or a complete v2; a retry, gc and a checkout all work."""
    repo = Repository.open(root)
    report = repo.verify(deep=True)
    assert report.ok, report.problems
    head = repo.head()
    if head != v1:
        manifest = repo.manifest(head)
        assert (manifest.version, manifest.parent) == (2, v1)
    temps = leftover_temps(root)
    if temps:
        assert any("temporary files" in note for note in report.notes), report.notes
    retry = repo.snapshot("retry after the kill")
    assert retry.version == 2 and retry.created == (head == v1)
    if head != v1:
        assert retry.id == head
    gc = repo.gc()
    assert sorted(gc.temp_files) == sorted(p.name for p in temps)
    assert leftover_temps(root) == []
    after = repo.verify()
    assert after.ok and after.notes == [], (after.problems, after.notes)
    repo.checkout("latest", scratch)
    assert same(plain_state(scratch), new)
    return "old" if head == v1 else "new"


def check_after_killed_checkout(root: Path, old: tuple, new: tuple, rev: str) -> str:
    """Plain readers see old or new; a mix only while the journal is there, and the next egds
    command completes the new one. A later checkout works and the repo is untouched."""
    repo = Repository.open(root)
    cache = repo.cache_path
    journal = (cache / ".egds-checkout.json").exists()
    state = plain_state(cache)
    if same(state, old):
        seen = "old"
    elif same(state, new):
        seen = "new"
    else:
        assert journal, "plain readers see a mix of two versions and no journal says how to finish it"
        seen = "mix"
    repo.status()  # any egds command finishes (journal) or drops (no journal) an interrupted write
    recovered = plain_state(cache)
    if journal:
        assert same(recovered, new), "the journal was committed, so the new version must win"
    else:
        assert same(recovered, old if seen == "old" else new)
    assert cache_leftovers(cache) == [], cache_leftovers(cache)
    assert repo.verify().ok
    result = repo.checkout(rev)
    assert same(plain_state(cache), new) and result.rows == len(new[1])
    repo.gc()
    assert leftover_temps(root) == []
    return seen


# ---- small repositories: kill before/after every rename ------------------------------------------


@pytest.fixture(scope="module")
def small_snapshot_base(tmp_path_factory) -> tuple[Path, str, tuple]:
    """v1 = 300 chunks over 3 months; the cache then edits month 1 and adds month 4 (so a snapshot
    writes two objects, an index object, a manifest, the ref and state.json)."""
    root = tmp_path_factory.mktemp("small") / "base"
    repo = Repository.init(root, cache="cache/rag", model="test-model")
    write_cache(repo.cache_path, make_chunks(300, months=3), make_embeddings(300, dim=8), index={"n": 1})
    v1 = repo.snapshot("v1").id
    chunks = make_chunks(300, months=3) + later_chunks(50, 300, "2024-04")
    chunks[0]["text"] = "edited"
    write_cache(repo.cache_path, chunks, make_embeddings(350, dim=8), index={"n": 2})
    return root, v1, plain_state(repo.cache_path)


def test_a_snapshot_killed_before_or_after_any_rename_leaves_a_verified_repo_at_the_old_or_new_version(
    child_script, small_snapshot_base, tmp_path
):
    base, v1, new = small_snapshot_base
    counting = tmp_path / "count-run"
    shutil.copytree(base, counting)
    renames = count_renames(child_script, tmp_path, root=str(counting), op="snapshot")
    assert renames >= 5  # 2 objects, index object, manifest, ref, state.json
    outcomes = {}
    for n in range(1, renames + 1):
        for when in ("before", "after"):
            work = tmp_path / f"{when}-{n}"
            work.mkdir()
            shutil.copytree(base, work / "repo")
            where = pause_and_kill(child_script, work, n, when, root=str(work / "repo"), op="snapshot")
            outcomes[where] = check_after_killed_snapshot(work / "repo", v1, new, work / "out")
    # The kill points span the whole operation: some leave v1, some the finished v2.
    assert set(outcomes.values()) == {"old", "new"}, outcomes


def test_a_killed_snapshot_leaves_temp_files_that_verify_reports_and_gc_removes(child_script, small_snapshot_base, tmp_path):
    base, v1, new = small_snapshot_base
    shutil.copytree(base, tmp_path / "repo")
    # Rename 1 is the first object's commit: its temp file (`.ID.parquet.XXXX.tmp`, next to where the
    # object goes) is complete and not yet renamed.
    pause_and_kill(child_script, tmp_path, 1, "before", root=str(tmp_path / "repo"), op="snapshot")
    repo = Repository.open(tmp_path / "repo")
    temps = leftover_temps(repo.root)
    assert temps and all(p.parent.parent == repo.store.objects_dir and p.name.startswith(".") for p in temps)
    report = repo.verify()
    assert report.ok and any("temporary files" in n for n in report.notes), report.notes
    dry = repo.gc(dry_run=True)
    assert sorted(dry.temp_files) == sorted(p.name for p in temps) and leftover_temps(repo.root) == temps
    repo.gc()
    assert leftover_temps(repo.root) == [] and repo.head() == v1


@pytest.fixture(scope="module")
def small_checkout_base(tmp_path_factory) -> tuple[Path, tuple, tuple]:
    """v1: 60 chunks, no index.json; v2 (= the cache): 90 chunks, an index and extra keys."""
    root = tmp_path_factory.mktemp("small-co") / "base"
    repo = Repository.init(root, cache="cache/rag", model="test-model")
    write_cache(repo.cache_path, make_chunks(60), make_embeddings(60, dim=8))
    repo.snapshot("v1")
    v1_state = plain_state(repo.cache_path)
    write_cache(repo.cache_path, make_chunks(90), make_embeddings(90, dim=8, seed=2), index={"n": 90},
                pickle_extra={"model": "m2"}, metadata_extra={"built": "today"})
    repo.snapshot("v2")
    return root, plain_state(repo.cache_path), v1_state


def test_a_checkout_killed_before_or_after_any_rename_leaves_the_old_or_the_new_cache(child_script, small_checkout_base, tmp_path):
    base, v2_state, v1_state = small_checkout_base
    counting = tmp_path / "count-run"
    shutil.copytree(base, counting)
    renames = count_renames(child_script, tmp_path, root=str(counting), op="checkout", rev="v1")
    assert renames >= 4  # journal, embeddings.pkl, metadata.json, state.json
    seen = {}
    for n in range(1, renames + 1):
        for when in ("before", "after"):
            work = tmp_path / f"{when}-{n}"
            work.mkdir()
            shutil.copytree(base, work / "repo")
            where = pause_and_kill(child_script, work, n, when, root=str(work / "repo"), op="checkout", rev="v1")
            seen[where] = check_after_killed_checkout(work / "repo", old=v2_state, new=v1_state, rev="v1")
    assert seen[next(w for w in seen if w.startswith("before replace 1:"))] == "old"  # before the journal
    assert "new" in seen.values(), seen


def test_status_during_a_checkout_waits_instead_of_deleting_the_checkouts_files(child_script, small_checkout_base, tmp_path):
    base, v2_state, v1_state = small_checkout_base
    shutil.copytree(base, tmp_path / "repo")
    go, marker = tmp_path / "go", tmp_path / "marker"
    outcome: dict[str, Any] = {}

    def status() -> None:
        try:
            outcome["status"] = Repository.open(tmp_path / "repo").status()
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    # Pause the checkout after its temp files are written, just before it commits the journal.
    with running(child_script, tmp_path, root=str(tmp_path / "repo"), op="checkout", rev="v1",
                 pause_at=1, when="before", go=str(go)) as proc:
        assert wait_until(marker.exists, proc), child_error(tmp_path)
        assert (tmp_path / "repo/cache/rag/embeddings.pkl.egds-tmp").exists()
        reader = threading.Thread(target=status, daemon=True)
        reader.start()
        reader.join(0.5)  # a status that does not wait for the writer is done by now
        go.touch()
        assert proc.wait(timeout=TIMEOUT) == 0, child_error(tmp_path)
        reader.join(TIMEOUT)
        assert not reader.is_alive()
    assert "error" not in outcome, outcome
    assert same(plain_state(tmp_path / "repo/cache/rag"), v1_state), "the checkout reported success but left other data"
    assert outcome["status"].rows == len(v1_state[1])


# ---- a 20k x 64 cache: kills by polling for files, and after delays -------------------------------


@pytest.fixture(scope="module")
def big_base(tmp_path_factory) -> tuple[Path, str, tuple, tuple]:
    """v1 = 10k chunks over 6 months; the cache then holds 20k chunks over 12 months (not recorded)."""
    root = tmp_path_factory.mktemp("big") / "base"
    repo = Repository.init(root, cache="cache/rag", model="test-model")
    write_cache(repo.cache_path, make_chunks(10_000, months=6), make_embeddings(10_000, dim=64), index={"n": 1})
    v1 = repo.snapshot("v1").id
    old = plain_state(repo.cache_path)
    write_cache(repo.cache_path, make_chunks(20_000, months=12), make_embeddings(20_000, dim=64, seed=1), index={"n": 2})
    return root, v1, old, plain_state(repo.cache_path)


def _count(directory: Path, pattern: str = "*") -> int:
    return sum(1 for p in directory.rglob(pattern) if p.is_file()) if directory.is_dir() else 0


def _snapshot_kill_points(root: Path) -> dict[str, Callable[[], bool]]:
    egds, start = root / ".egds", time.monotonic()
    objects = _count(egds / "objects", "*.parquet")
    return {
        "a partition file appears in tmp": lambda: any((egds / "tmp").iterdir()),
        "the third new object appears": lambda: _count(egds / "objects", "*.parquet") >= objects + 3,
        "the new manifest appears": lambda: _count(egds / "manifests", "*.json") >= 2,
        "after 0.05 s": lambda: time.monotonic() - start > 0.05,
        "after 0.3 s": lambda: time.monotonic() - start > 0.3,
        "after 0.6 s": lambda: time.monotonic() - start > 0.6,
    }


@pytest.mark.parametrize("point", list(_snapshot_kill_points(Path("/nonexistent"))))
def test_a_large_snapshot_killed_midway_leaves_a_verified_repo_and_a_later_snapshot_succeeds(
    child_script, big_base, tmp_path, point
):
    base, v1, _, new = big_base
    shutil.copytree(base, tmp_path / "repo")
    with running(child_script, tmp_path, root=str(tmp_path / "repo"), op="snapshot") as proc:
        condition = _snapshot_kill_points(tmp_path / "repo")[point]
        wait_until(condition, proc)
        kill(proc)
    check_after_killed_snapshot(tmp_path / "repo", v1, new, tmp_path / "out")


@pytest.fixture(scope="module")
def big_checkout_base(big_base, tmp_path_factory) -> tuple[Path, tuple, tuple]:
    """The big repo with the 20k cache recorded as v2; checking out v1 (10k rows) replaces it."""
    base, _, old, new = big_base
    root = tmp_path_factory.mktemp("big-co") / "base"
    shutil.copytree(base, root)
    Repository.open(root).snapshot("v2")
    return root, new, old


@pytest.mark.parametrize(
    "point",
    ["embeddings.pkl.egds-tmp appears", "metadata.json.egds-tmp appears", "the journal appears", "after 0.1 s", "after 0.4 s"],
)
def test_a_large_checkout_killed_midway_leaves_the_old_or_the_new_cache_never_a_mix(child_script, big_checkout_base, tmp_path, point):
    base, v2_state, v1_state = big_checkout_base
    shutil.copytree(base, tmp_path / "repo")
    cache = tmp_path / "repo" / "cache" / "rag"
    start = time.monotonic()
    conditions = {
        "embeddings.pkl.egds-tmp appears": lambda: (cache / "embeddings.pkl.egds-tmp").exists(),
        "metadata.json.egds-tmp appears": lambda: (cache / "metadata.json.egds-tmp").exists(),
        "the journal appears": lambda: (cache / ".egds-checkout.json").exists(),
        "after 0.1 s": lambda: time.monotonic() - start > 0.1,
        "after 0.4 s": lambda: time.monotonic() - start > 0.4,
    }
    with running(child_script, tmp_path, root=str(tmp_path / "repo"), op="checkout", rev="v1") as proc:
        wait_until(conditions[point], proc)
        kill(proc)
    array, chunks = plain_state(cache)[:2]
    assert array.shape[0] == len(chunks) or (cache / ".egds-checkout.json").exists()
    check_after_killed_checkout(tmp_path / "repo", old=v2_state, new=v1_state, rev="v1")


# ---- the write lock -------------------------------------------------------------------------------


def test_a_second_snapshot_fails_fast_with_lock_held_naming_the_pid_while_another_process_holds_the_lock(
    child_script, small_snapshot_base, tmp_path
):
    base, v1, new = small_snapshot_base
    root = tmp_path / "repo"
    shutil.copytree(base, root)
    with running(child_script, tmp_path, root=str(root), op="hold-lock") as holder:
        assert wait_until((tmp_path / "marker").exists, holder), child_error(tmp_path)
        before = repo_tree(root)
        repo = Repository.open(root)
        for name, call in {
            "snapshot": lambda: repo.snapshot("second"),
            "checkout": lambda: repo.checkout("v1", force=True),
            "tag": lambda: repo.tag("release"),
            "gc": lambda: repo.gc(),
        }.items():
            started = time.monotonic()
            with pytest.raises(LockHeld) as info:
                call()
            assert time.monotonic() - started < 2, f"{name} waited for the lock instead of failing fast"
            assert f"pid {holder.pid}" in str(info.value) and "\n" not in str(info.value)
        proc = subprocess.run([str(EGDS), "-C", str(root), "snapshot"], capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 1 and proc.stderr.startswith("egds: error: "), proc.stderr
        assert f"pid {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr
        assert repo_tree(root) == before
        kill(holder)
    # The kernel released the dead holder's lock: no stale lock to clear by hand.
    assert repo.snapshot("after the holder died").version == 2
    assert repo.verify().ok


def test_two_concurrent_snapshots_record_one_version_and_any_loser_fails_with_lock_held(big_base, tmp_path):
    base, v1, _, new = big_base
    root = tmp_path / "repo"
    shutil.copytree(base, root)
    procs = [
        subprocess.Popen([str(EGDS), "-C", str(root), "snapshot", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        results = [p.communicate(timeout=TIMEOUT) + (p.returncode,) for p in procs]
    finally:
        for p in procs:
            kill(p)
    winners = [json.loads(out) for out, _, rc in results if rc == 0]
    losers = [err for _, err, rc in results if rc != 0]
    assert winners, results
    for err in losers:
        assert err.startswith("egds: error: another egds process (pid ") and "Traceback" not in err, err
    assert sum(w["created"] for w in winners) == 1
    repo = Repository.open(root)
    assert [e.version for e in repo.log()] == [2, 1]
    assert repo.verify().ok
    repo.checkout("latest", tmp_path / "out")
    assert same(plain_state(tmp_path / "out"), new)
