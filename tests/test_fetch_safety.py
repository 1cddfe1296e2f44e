"""Pull, clone and gc under faults: SIGKILL at every durable step and at random moments, a full
disk, a remote serving content that fails the checkout, a failing ref write, a racing snapshot.

The invariants (SPEC.md §14.3, §10):
- pull: `main` never names a version the cache does not hold; while a pull has rewritten the cache
  but not yet moved `main`, snapshot refuses (naming `egds pull`); running pull again finishes it,
  and the result is byte for byte what a clean pull gives.
- clone: running the same clone command again finishes an interrupted clone, to the same result as
  a clean clone; any other command in the directory says what to run.
- gc: killed before any deletion, the repository still passes `verify`; running gc again finishes.

Kill points are deterministic where it matters: a child process wraps `os.replace` (every durable
write of egds is one) or `os.unlink` (every deletion of gc), and pauses before the N-th call until
the test kills it. Random-moment kills run the real CLI and kill it after a seeded random delay:
`EGDS_KILLS=N` sets how many per operation (default 2; the documented long run uses 30).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.cache import recover_interrupted_write
from egregora_ds.card import REF_KEY, manifest_key, object_key
from egregora_ds.clone import CLONE_MARKER, PULL_MARKER
from egregora_ds.errors import CorruptObject, LockHeld, UnsavedWork, UsageError
from egregora_ds.ids import PARQUET, hash_bytes
from egregora_ds.parquet_io import encode_partition
from egregora_ds.table import content_hash

EGDS = Path(sys.executable).with_name("egds")
TIMEOUT = 60.0
KILLS = int(os.environ.get("EGDS_KILLS", "2"))
CACHE_FILES = ("embeddings.pkl", "metadata.json", "index.json")


def read_parquet_bytes(data: bytes):
    """A Parquet object's table as any reader gets it (these tests craft objects; egds' own reader
    checks them against a manifest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(data)).read()

CHILD = r'''
import json, os, sys, threading, time
from pathlib import Path

spec = json.loads(sys.argv[1])
real = {"replace": os.replace, "unlink": os.unlink}
lock = threading.Lock()
calls = {"replace": 0, "unlink": 0}
paths = {"replace": [], "unlink": []}


def pause(where):
    with open(spec["marker"] + ".part", "w") as f:
        f.write(where)
    real["replace"](spec["marker"] + ".part", spec["marker"])
    deadline = time.monotonic() + 60
    while not (spec.get("go") and os.path.exists(spec["go"])):
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.002)


def hooked(kind):
    def call(path, *args, **kwargs):
        with lock:
            calls[kind] += 1
            n = calls[kind]
            paths[kind].append(str(path))
        if kind == spec.get("kind") and n == spec.get("pause_at"):
            pause(f"before {kind} {n}: {path}")
        return real[kind](path, *args, **kwargs)
    return call


os.replace = hooked("replace")
os.unlink = hooked("unlink")
from egregora_ds import Repository

if spec.get("pause_in"):  # pause when a function is entered: "module:function"
    import importlib
    module_name, function_name = spec["pause_in"].split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)

    def paused(*args, **kwargs):
        pause(f"entering {spec['pause_in']}")
        return original(*args, **kwargs)

    setattr(module, function_name, paused)

if spec["op"] == "pull":
    Repository.open(spec["root"]).pull("origin")
elif spec["op"] == "gc":
    Repository.open(spec["root"]).gc()
elif spec["op"] == "clone":
    Repository.clone(spec["url"], spec["root"])
if spec.get("count_file"):
    Path(spec["count_file"]).write_text(json.dumps(paths))
'''


# ---- child processes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def child_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("child") / "child.py"
    path.write_text(CHILD)
    return path


@contextlib.contextmanager
def running(script: Path, workdir: Path, **spec: Any) -> Iterator[subprocess.Popen]:
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


def call_paths(script: Path, workdir: Path, kind: str, **spec: Any) -> list[str]:
    """The path of every `kind` call ("replace" or "unlink") of a clean run, in order."""
    count_file = workdir / "calls.json"
    with running(script, workdir, count_file=str(count_file), **spec) as proc:
        assert proc.wait(timeout=TIMEOUT) == 0, child_error(workdir)
    return json.loads(count_file.read_text())[kind]


def count_calls(script: Path, workdir: Path, kind: str, **spec: Any) -> int:
    return len(call_paths(script, workdir, kind, **spec))


def first_call(paths: list[str], fragment: str) -> int:
    """The 1-based number of the first call whose path holds `fragment`."""
    return next(n for n, path in enumerate(paths, 1) if fragment in path)


def pause_and_kill(script: Path, workdir: Path, n: int, kind: str, **spec: Any) -> str:
    """Run the child until it is about to make its n-th `kind` call, then SIGKILL it."""
    marker = workdir / "marker"
    marker.unlink(missing_ok=True)
    with running(script, workdir, pause_at=n, kind=kind, **spec) as proc:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"child ended (rc {proc.returncode}) before {kind} {n}: {child_error(workdir)}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {kind} {n}")
            time.sleep(0.002)
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    return marker.read_text()


def kill_at_random(args: list[str], delay: float, cwd: Path) -> int | None:
    """Run the CLI, SIGKILL it after `delay` seconds; its exit status if it finished first."""
    proc = subprocess.Popen([str(EGDS), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
        return proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        return None
    finally:
        if proc.stderr is not None:
            proc.stderr.close()


def timed_cli(args: list[str], cwd: Path) -> float:
    start = time.monotonic()
    done = subprocess.run([str(EGDS), *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - start


def sample(count: int, total: int, seed: int) -> list[int]:
    """`count` of 1..total, seeded (the full sweep runs in the slow tests)."""
    return sorted(random.Random(seed).sample(range(1, total + 1), min(count, total)))


def cache_bytes(cache: Path) -> dict[str, bytes | None]:
    return {name: (cache / name).read_bytes() if (cache / name).is_file() else None for name in CACHE_FILES}


# ---- a remote one version ahead of a clone --------------------------------------------------------


@dataclass
class PullWorld:
    remote: Path
    behind: Path  # a clone holding v1; the remote holds v2
    v1: str
    v2: str
    v1_cache: dict[str, bytes | None]
    v2_cache: dict[str, bytes | None]  # what a clean pull leaves in the cache


def fresh(world_path: Path, into: Path) -> Path:
    """A copy of a template repository at `into` (replacing what was there)."""
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(world_path, into, symlinks=True)
    return into


@pytest.fixture(scope="module")
def pull_world(tmp_path_factory: pytest.TempPathFactory) -> PullWorld:
    root = tmp_path_factory.mktemp("pull-world")
    origin = Repository.init(root / "origin", cache="cache/rag", model="test-model")
    chunks, vectors = make_chunks(400, months=4), make_embeddings(400, dim=16)
    write_cache(origin.cache_path, chunks, vectors, index={"n": 4})
    v1 = origin.snapshot("v1").id
    origin.remote_add("origin", str(root / "remote"))
    origin.push("origin")
    Repository.clone(str(root / "remote"), root / "behind")
    chunks[5]["text"], chunks[150]["text"] = "edited in v2", "also edited"
    chunks += make_chunks(100, months=1, start_year=2025, seed=3)
    for i, chunk in enumerate(chunks[400:]):
        chunk["chunk_id"] = 1000 + i
    write_cache(origin.cache_path, chunks, make_embeddings(500, dim=16), index={"n": 5}, metadata_extra={"v": 2})
    v2 = origin.snapshot("v2").id
    origin.push("origin")
    clean = Repository.open(fresh(root / "behind", root / "clean"))
    assert clean.pull("origin").updated
    return PullWorld(root / "remote", root / "behind", v1, v2, cache_bytes(Repository.open(root / "behind").cache_path),
                     cache_bytes(clean.cache_path))


def check_after_interrupted_pull(root: Path, world: PullWorld) -> str:
    """main names the version the cache holds (or the pull is pending and snapshot refuses); verify
    passes; pull again finishes, to the bytes of a clean pull. Returns the state found."""
    repo = Repository.open(root)
    recover_interrupted_write(repo.cache_path)  # what any egds command does first
    head, cache = repo.head(), cache_bytes(repo.cache_path)
    assert head in (world.v1, world.v2)
    if head == world.v2:
        assert cache == world.v2_cache, "main names v2 but the cache does not hold it"
        state = "done"
    elif cache == world.v2_cache:
        assert (repo.store.root / PULL_MARKER).exists(), "the cache holds v2 and nothing says a pull is pending"
        with pytest.raises(UsageError, match="run `egds pull origin` to finish it"):
            repo.snapshot("a cron snapshot racing the interrupted pull")
        assert repo.head() == world.v1
        state = "cache ahead"
    else:
        assert cache == world.v1_cache, "the cache is neither v1 nor v2"
        state = "not started"
    report = repo.verify()
    assert report.ok, report.problems
    repo.pull("origin")
    assert repo.head() == world.v2 and repo.store.read_ref("remotes/origin/main") == world.v2
    assert cache_bytes(repo.cache_path) == world.v2_cache
    assert not (repo.store.root / PULL_MARKER).exists()
    assert repo.verify().ok
    assert repo.snapshot("nothing changed").created is False
    return state


# ---- pull -----------------------------------------------------------------------------------------


def _pull_kill_sweep(child_script: Path, pull_world: PullWorld, tmp_path: Path, points: list[int] | None) -> dict[str, str]:
    counting = fresh(pull_world.behind, tmp_path / "count")
    renames = count_calls(child_script, tmp_path, "replace", op="pull", root=str(counting))
    assert renames >= 8  # manifest, objects, marker, cache journal and renames, state.json, main, remote ref
    seen = {}
    for n in points if points is not None else range(1, renames + 1):
        work = fresh(pull_world.behind, tmp_path / "work")
        where = pause_and_kill(child_script, tmp_path, n, "replace", op="pull", root=str(work))
        seen[where] = check_after_interrupted_pull(work, pull_world)
    return seen


def test_a_pull_killed_before_some_durable_step_leaves_main_naming_the_cache_and_a_rerun_completes_it(
    child_script: Path, pull_world: PullWorld, tmp_path: Path
) -> None:
    """The kill points that matter: the first manifest stored, the cache's journal (the checkout
    commits), the first cache rename, state.json (the cache's stamp), and each ref."""
    paths = call_paths(child_script, tmp_path, "replace", op="pull", root=str(fresh(pull_world.behind, tmp_path / "c")))
    points = [first_call(paths, f) for f in ("/manifests/", ".egds-checkout.json", "embeddings.pkl", "state.json",
                                             "/refs/.main", "/refs/remotes/origin/")]
    seen = _pull_kill_sweep(child_script, pull_world, tmp_path, sorted(set(points)))
    assert {"not started", "cache ahead"} <= set(seen.values()), seen


@pytest.mark.slow
def test_a_pull_killed_before_every_durable_step_leaves_main_naming_the_cache_and_a_rerun_completes_it(
    child_script: Path, pull_world: PullWorld, tmp_path: Path
) -> None:
    seen = _pull_kill_sweep(child_script, pull_world, tmp_path, None)
    states = set(seen.values())
    assert {"not started", "cache ahead"} <= states, seen  # both windows were hit
    last = max(seen, key=lambda w: int(w.split()[2].rstrip(":")))
    assert "/refs/remotes/origin/" in last, "the remote-tracking ref moves last"


def test_a_pull_killed_at_random_moments_never_leaves_main_ahead_of_the_cache(pull_world: PullWorld, tmp_path: Path) -> None:
    clean = fresh(pull_world.behind, tmp_path / "timing")
    duration = timed_cli(["-C", str(clean), "pull"], tmp_path)
    rng = random.Random(20240611)
    states: dict[str, int] = {}
    for k in range(KILLS):
        work = fresh(pull_world.behind, tmp_path / "work")
        finished = kill_at_random(["-C", str(work), "pull"], rng.uniform(duration / 2, duration), tmp_path)
        state = "finished first" if finished is not None else check_after_interrupted_pull(work, pull_world)
        if finished is not None:
            check_after_interrupted_pull(work, pull_world)
        states[state] = states.get(state, 0) + 1
    print(f"pull: {KILLS} random kills: {states}")  # the long run's figures (pytest -s)


def test_a_pull_on_a_full_disk_leaves_main_and_the_cache_at_the_old_version_and_a_rerun_completes_it(
    pull_world: PullWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import egregora_ds.cache as cache_module

    repo = Repository.open(fresh(pull_world.behind, tmp_path / "repo"))

    def disk_full(*args: Any, **kwargs: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device", str(repo.cache_path / "metadata.json.egds-tmp"))

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "_write_synced", disk_full)
        with pytest.raises(OSError):
            repo.pull("origin")
    assert repo.head() == pull_world.v1
    assert cache_bytes(repo.cache_path) == pull_world.v1_cache
    assert repo.snapshot("routine").created is False, "the cache still is v1: nothing to record, no revert"
    assert check_after_interrupted_pull(repo.root, pull_world) == "not started"


def _bad_v2(world: PullWorld, remote: Path) -> str:
    """Publish on `remote` a v2 whose first partition hashes right but holds twice the rows its
    manifest entry counts: only the checkout can tell. Returns its id."""
    document = json.loads((world.remote / manifest_key(world.v2)).read_bytes())
    entry = document["partitions"][0]
    table = read_parquet_bytes((world.remote / object_key(entry["object"], PARQUET)).read_bytes())
    doubled = pa.concat_tables([table, table])
    data = encode_partition(doubled, entry["key"], content_hash(doubled)).to_pybytes()
    object_id = hash_bytes(data)
    (remote / object_key(object_id, PARQUET)).parent.mkdir(parents=True, exist_ok=True)
    (remote / object_key(object_id, PARQUET)).write_bytes(data)
    entry.update({"object": object_id, "content_hash": content_hash(doubled), "bytes": len(data)})
    manifest = json.dumps(document, indent=2).encode()
    manifest_id = hash_bytes(manifest)
    (remote / manifest_key(manifest_id)).write_bytes(manifest)
    (remote / REF_KEY).write_text(f"{manifest_id}\n")
    return manifest_id


def test_a_pull_of_a_version_that_fails_its_checkout_leaves_main_at_the_version_the_cache_holds(
    pull_world: PullWorld, tmp_path: Path
) -> None:
    hostile = tmp_path / "hostile"
    shutil.copytree(pull_world.remote, hostile)
    _bad_v2(pull_world, hostile)
    repo = Repository.open(fresh(pull_world.behind, tmp_path / "repo"))
    repo.remote_remove("origin")
    repo.remote_add("origin", str(hostile))
    with pytest.raises(CorruptObject, match="declares 200 rows, the manifest 100"):
        repo.pull("origin")
    assert repo.head() == pull_world.v1, "main moved to a version that was never checked out"
    assert cache_bytes(repo.cache_path) == pull_world.v1_cache
    assert repo.status().clean
    assert repo.snapshot("routine").created is False, "a snapshot now must not record a silent revert"
    again = Repository.open(repo.root)
    with pytest.raises(CorruptObject):
        again.pull("origin")
    assert again.head() == pull_world.v1, "a re-run must not say 'Already up to date' over the old cache"
    # The remote is repaired: pulling again completes.
    shutil.rmtree(hostile)
    shutil.copytree(pull_world.remote, hostile)
    assert check_after_interrupted_pull(repo.root, pull_world) == "not started"


def test_a_pull_that_fails_moving_main_leaves_a_pending_pull_that_snapshot_refuses_and_pull_finishes(
    pull_world: PullWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from egregora_ds.store.local import LocalStore

    repo = Repository.open(fresh(pull_world.behind, tmp_path / "repo"))
    real_write_ref = LocalStore.write_ref

    def failing(self: LocalStore, name: str, manifest_id: str) -> None:
        if name == "main":
            raise OSError(errno.EIO, "Input/output error", str(self.ref_path(name)))
        real_write_ref(self, name, manifest_id)

    with monkeypatch.context() as patch:
        patch.setattr(LocalStore, "write_ref", failing)
        with pytest.raises(OSError):
            repo.pull("origin")
    assert repo.head() == pull_world.v1 and cache_bytes(repo.cache_path) == pull_world.v2_cache
    assert any("egds pull origin" in note for note in repo.verify().notes)
    repo.gc()  # keeps what the pending pull checked out: snapshot still knows the cache is v2
    assert repo.has_manifest(pull_world.v2) and repo.verify().ok
    done = subprocess.run([str(EGDS), "-C", str(repo.root), "snapshot", "-m", "cron"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 2 and "run `egds pull origin` to finish it" in done.stderr, done.stderr
    assert Repository.open(repo.root).head() == pull_world.v1
    # The advice, run as written, finishes the pull without fetching again.
    done = subprocess.run([str(EGDS), "-C", str(repo.root), "pull", "origin"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert check_after_interrupted_pull(repo.root, pull_world) == "done"


def test_a_snapshot_racing_a_pull_waits_for_the_lock_instead_of_recording_a_revert(
    child_script: Path, pull_world: PullWorld, tmp_path: Path
) -> None:
    """The pull is paused as its checkout starts (the cache still holds v1): a snapshot then must not
    run, or it would record v1's content on top of whatever main names."""
    work = fresh(pull_world.behind, tmp_path / "work")
    marker = tmp_path / "marker"
    with running(child_script, tmp_path, pause_in="egregora_ds.checkout:checkout", op="pull", root=str(work)) as proc:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            assert proc.poll() is None, child_error(tmp_path)
            assert time.monotonic() < deadline
            time.sleep(0.002)
        with pytest.raises(LockHeld):
            Repository.open(work).snapshot("cron, while the pull is checking out")
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert Repository.open(work).head() == pull_world.v1
    check_after_interrupted_pull(work, pull_world)


def test_a_pull_over_unsaved_work_gives_advice_that_runs_as_written(pull_world: PullWorld, tmp_path: Path) -> None:
    repo = Repository.open(fresh(pull_world.behind, tmp_path / "repo"))
    (repo.cache_path / "index.json").write_text('{"n": "edited by hand"}')
    with pytest.raises(UnsavedWork) as raised:
        repo.pull("origin")
    message = str(raised.value)
    assert "--force" not in message.replace("egds checkout --force", ""), "pull has no --force"
    assert "`egds checkout --force`" in message and "`egds pull origin`" in message, message
    for command in (["checkout", "--force"], ["pull", "origin"]):
        done = subprocess.run([str(EGDS), "-C", str(repo.root), *command], capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
    assert Repository.open(repo.root).head() == pull_world.v2
    assert cache_bytes(repo.cache_path) == pull_world.v2_cache


# ---- clone ----------------------------------------------------------------------------------------


@dataclass
class CloneWorld:
    url: str
    v2: str
    cache: dict[str, bytes | None]
    manifests: set[str]
    objects: set[str]
    notes: list[str]  # what verify says of a clean clone (v1's objects are on the remote, not fetched)


def clone_state(directory: Path) -> tuple[str | None, dict[str, bytes | None], set[str], set[str]]:
    repo = Repository.open(directory)
    objects = {p.name for p in repo.store.objects_dir.rglob("*") if p.is_file()}
    return repo.head(), cache_bytes(repo.cache_path), set(repo.store.manifest_ids()), objects


@pytest.fixture(scope="module")
def clone_world(pull_world: PullWorld, tmp_path_factory: pytest.TempPathFactory) -> CloneWorld:
    clean = tmp_path_factory.mktemp("clean-clone") / "copy"
    Repository.clone(str(pull_world.remote), clean)
    head, cache, manifests, objects = clone_state(clean)
    assert head == pull_world.v2
    return CloneWorld(str(pull_world.remote), pull_world.v2, cache, manifests, objects, Repository.open(clean).verify().notes)


def check_resumed_clone(directory: Path, world: CloneWorld, cli: bool = True) -> None:
    """Running the same clone command again (the CLI, or the API) finishes it like a clean clone."""
    if cli:
        done = subprocess.run([str(EGDS), "clone", world.url, str(directory)], capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
    else:
        Repository.clone(world.url, directory)
    assert not (directory / ".egds" / CLONE_MARKER).exists()
    head, cache, manifests, objects = clone_state(directory)
    assert (head, manifests, objects) == (world.v2, world.manifests, world.objects)
    assert cache == world.cache
    repo = Repository.open(directory)
    report = repo.verify()
    assert report.ok and report.notes == world.notes, (report.problems, report.notes)
    assert repo.store.read_ref("remotes/origin/main") == world.v2


def _clone_kill_sweep(child_script: Path, world: CloneWorld, tmp_path: Path, points: list[int] | None) -> None:
    count_dir = tmp_path / "count"
    renames = count_calls(child_script, tmp_path, "replace", op="clone", url=world.url, root=str(count_dir))
    for n in points if points is not None else range(1, renames + 1):
        target = tmp_path / "copy"
        shutil.rmtree(target, ignore_errors=True)
        where = pause_and_kill(child_script, tmp_path, n, "replace", op="clone", url=world.url, root=str(target))
        if (target / ".egds").exists():
            with pytest.raises(UsageError, match=f"run `egds clone {world.url} {target}` to finish it"):
                Repository.open(target).status()
        check_resumed_clone(target, world, cli=False)


def test_a_clone_killed_before_some_durable_step_is_finished_by_running_the_same_command_again(
    child_script: Path, clone_world: CloneWorld, tmp_path: Path
) -> None:
    renames = count_calls(child_script, tmp_path, "replace", op="clone", url=clone_world.url, root=str(tmp_path / "c0"))
    _clone_kill_sweep(child_script, clone_world, tmp_path, sample(3, renames, seed=11) + [renames])


@pytest.mark.slow
def test_a_clone_killed_before_every_durable_step_is_finished_by_running_the_same_command_again(
    child_script: Path, clone_world: CloneWorld, tmp_path: Path
) -> None:
    _clone_kill_sweep(child_script, clone_world, tmp_path, None)


def test_a_clone_killed_at_random_moments_is_finished_by_running_the_same_command_again(
    clone_world: CloneWorld, tmp_path: Path
) -> None:
    duration = timed_cli(["clone", clone_world.url, str(tmp_path / "timing")], tmp_path)
    rng = random.Random(20240612)
    states: dict[str, int] = {}
    for k in range(KILLS):
        target = tmp_path / f"copy-{k}"
        finished = kill_at_random(["clone", clone_world.url, str(target)], rng.uniform(duration / 2, duration), tmp_path)
        state = ("finished first" if finished is not None else "left a marker" if (target / ".egds" / CLONE_MARKER).exists()
                 else "left a directory" if target.exists() else "left nothing")
        states[state] = states.get(state, 0) + 1
        check_resumed_clone(target, clone_world)
    print(f"clone: {KILLS} random kills: {states}")  # the long run's figures (pytest -s)


def test_an_unfinished_clone_of_another_url_is_refused_naming_the_command_that_finishes_it(
    child_script: Path, clone_world: CloneWorld, tmp_path: Path
) -> None:
    target = tmp_path / "copy"
    pause_and_kill(child_script, tmp_path, 5, "replace", op="clone", url=clone_world.url, root=str(target))
    assert (target / ".egds" / CLONE_MARKER).exists()
    other = tmp_path / "other-remote"
    shutil.copytree(clone_world.url, other)
    done = subprocess.run([str(EGDS), "clone", str(other), str(target)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    assert f"interrupted clone of {clone_world.url}; run `egds clone {clone_world.url} {target}`" in done.stderr
    status = subprocess.run([str(EGDS), "-C", str(target), "status"], capture_output=True, text=True, timeout=TIMEOUT)
    assert status.returncode == 2 and f"run `egds clone {clone_world.url} {target}` to finish it" in status.stderr
    check_resumed_clone(target, clone_world)


def test_a_clone_of_no_partitions_is_refused_naming_the_partitions_and_creates_nothing(
    clone_world: CloneWorld, tmp_path: Path
) -> None:
    for value in ("", ","):
        done = subprocess.run([str(EGDS), "clone", clone_world.url, "copy", "--partitions", value], cwd=tmp_path,
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 2, done
        line = done.stderr.strip()
        assert line.startswith("egds: error: --partitions names no partition") and "2024-01, 2024-02" in line, line
        assert not (tmp_path / "copy").exists()
    with pytest.raises(UsageError, match="names no partition"):
        Repository.clone(clone_world.url, tmp_path / "copy", partitions=[])
    assert not (tmp_path / "copy").exists()


# ---- gc -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gc_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1, then v2 and v3 (each with new objects) that main no longer reaches, and two temp files."""
    root = tmp_path_factory.mktemp("gc") / "repo"
    repo = Repository.init(root, cache="cache/rag", model="test-model")
    chunks, vectors = make_chunks(90, months=3), make_embeddings(90, dim=8)
    write_cache(repo.cache_path, chunks, vectors, index={"n": 1})
    v1 = repo.snapshot("v1").id
    for n in (2, 3):
        chunks[n]["text"], chunks[40 + n]["text"] = f"edit {n}", f"edit {n}"
        write_cache(repo.cache_path, chunks, vectors, index={"n": n})
        repo.snapshot(f"v{n}")
    repo.store.write_ref("main", v1)
    repo.checkout("v1", force=True)
    (repo.store.tmp_dir / "123-abc.parquet").write_bytes(b"left by a killed snapshot")
    (repo.store.manifests_dir / ".x.json.k2j3.tmp").write_bytes(b"half")
    return root


def _gc_kill_sweep(child_script: Path, gc_base: Path, tmp_path: Path, points: list[int] | None) -> None:
    clean = Repository.open(fresh(gc_base, tmp_path / "clean"))
    clean.gc()
    expected = (set(clean.store.manifest_ids()), {p.name for p in clean.store.objects_dir.rglob("*") if p.is_file()})
    counting = fresh(gc_base, tmp_path / "count")
    unlinks = count_calls(child_script, tmp_path, "unlink", op="gc", root=str(counting))
    assert unlinks >= 8
    for n in points if points is not None else range(1, unlinks + 1):
        work = fresh(gc_base, tmp_path / "work")
        where = pause_and_kill(child_script, tmp_path, n, "unlink", op="gc", root=str(work))
        repo = Repository.open(work)
        report = repo.verify()
        assert report.ok, (where, report.problems)
        repo.gc()
        after = (set(repo.store.manifest_ids()), {p.name for p in repo.store.objects_dir.rglob("*") if p.is_file()})
        assert after == expected, where
        final = repo.verify()
        assert final.ok and final.notes == [], (where, final.problems, final.notes)


def test_gc_killed_before_some_deletion_leaves_a_repository_verify_passes_and_a_rerun_finishes(
    child_script: Path, gc_base: Path, tmp_path: Path
) -> None:
    _gc_kill_sweep(child_script, gc_base, tmp_path, [1, 2, 3, 5])


@pytest.mark.slow
def test_gc_killed_before_every_deletion_leaves_a_repository_verify_passes_and_a_rerun_finishes(
    child_script: Path, gc_base: Path, tmp_path: Path
) -> None:
    _gc_kill_sweep(child_script, gc_base, tmp_path, None)


def test_gc_deletes_manifests_newest_first_then_their_objects_then_temp_files(
    gc_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.open(fresh(gc_base, tmp_path / "repo"))
    versions = {repo.store.manifest_path(i).name: repo.manifest(i).version for i in repo.store.manifest_ids()}
    order: list[Path] = []
    real_unlink = Path.unlink

    def spy(self: Path, missing_ok: bool = False) -> None:
        order.append(self)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", spy)
    repo.gc()
    kinds = ["temp" if p.name.endswith(".tmp") or p.parent == repo.store.tmp_dir
             else "manifest" if p.parent == repo.store.manifests_dir else "object" for p in order]
    assert kinds == sorted(kinds, key=["manifest", "object", "temp"].index), kinds
    deleted_versions = [versions[p.name] for p in order if p.name in versions]
    assert deleted_versions == [3, 2], "a child manifest goes before its parent"
