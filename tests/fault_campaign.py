"""The kill -9 fault campaign: every operation, killed at random moments, in real processes.

For each operation a clean run is measured once (its duration and its outcome: the bytes it leaves
behind). Each trial then starts the same command on a fresh copy of the same starting state, kills
it with SIGKILL after a random delay drawn from [0, clean duration], checks the invariants that must
hold at ANY moment, re-runs the command to completion and compares the outcome with the clean one
byte for byte.

Invariants after a kill (before the re-run):
- the local repository passes `verify` (leftover temp files and unreachable objects are notes);
- no ref names missing data: the local `main`/tags, and the remote's ref, reach only manifests and
  objects that are present (read straight from the directory or the emulator, not through egds);
- a cache is the old version or the new one as egds reads it (a committed journal is completed);
- no silent revert: a snapshot of whatever the kill left records no version equal to an older one.

The scoreboard (`Scoreboard`) counts faults injected, kills that landed (the process was still
running), survived trials, bytes lost (referenced data missing or damaged) and refs to missing data.
`EGDS_FAULT_KILLS` sets the kills per operation (CI runs a few; the long run is documented in
tests/README-fault-campaign.md), `EGDS_FAULT_SEED` the seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egregora_ds import Repository
from egregora_ds.cache import CACHE_FILES, file_digests
from egregora_ds.card import REF_KEY, manifest_key, object_key
from egregora_ds.ids import JSON, PARQUET, hash_bytes, is_object_id
from egregora_ds.model import decode_manifest

EGDS = Path(sys.executable).with_name("egds")
RUN_TIMEOUT = 300.0


@dataclass
class Trial:
    """One trial's working directory and what the operation's checks need to know about it."""

    root: Path
    identifier: str = ""
    """The archive.org item of this trial (IA operations)."""


@dataclass
class Operation:
    name: str
    prepare: Callable[[Trial], None]
    """Build the starting state in `trial.root` (fresh each time)."""
    argv: Callable[[Trial], list[str]]
    outcome: Callable[[Trial], dict[str, bytes]]
    """What a completed run leaves behind that must equal the clean run's, byte for byte."""
    invariants: Callable[[Trial], list[str]]
    """Problems visible right after a kill (an empty list: all invariants hold)."""
    lost_bytes: Callable[[Trial], int] = lambda trial: 0
    """Bytes of referenced data missing or damaged after the kill."""
    rerun_argv: Callable[[Trial], list[str]] | None = None
    """The command that completes the job after a kill (default: the same command)."""


@dataclass
class Scoreboard:
    operation: str
    faults: int = 0
    landed: int = 0
    survived: int = 0
    bytes_lost: int = 0
    refs_to_missing_data: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.operation:<12} faults {self.faults:>3}  landed {self.landed:>3}  survived {self.survived:>3}  "
            f"bytes lost {self.bytes_lost}  refs to missing data {self.refs_to_missing_data}"
        )


def egds(argv: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EGDS), *argv], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# The child for event kills: egds itself, with the calls that change durable state (renames, fsyncs,
# unlinks, links, directory creation) and every socket send counted; on the K-th one it SIGKILLs its
# own process, exactly as `kill -9` would at that moment. With K = 0 it only counts, and writes the
# total to a file when it exits: the clean run's event count, from which K is drawn.
_CHILD = r"""
import atexit, os, signal, socket, sys, threading
target, count_file = int(sys.argv[1]), sys.argv[2]
lock, calls = threading.Lock(), [0]
def event():
    with lock:
        calls[0] += 1
        n = calls[0]
    if n == target:
        os.kill(os.getpid(), signal.SIGKILL)
def counted(function):
    def wrapper(*args, **kwargs):
        event()
        return function(*args, **kwargs)
    return wrapper
for name in ("replace", "rename", "fsync", "unlink", "link", "mkdir", "rmdir", "ftruncate"):
    setattr(os, name, counted(getattr(os, name)))
socket.socket.sendall = counted(socket.socket.sendall)
socket.socket.send = counted(socket.socket.send)
if target == 0:
    atexit.register(lambda: open(count_file, "w").write(str(calls[0])))
sys.argv = ["egds", *sys.argv[3:]]
from egregora_ds.cli import main
main()
"""


def count_events(argv: list[str], env: dict[str, str], scratch: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `egds argv` to completion in the counting child; (its result, the number of events)."""
    counter = scratch / "events"
    done = subprocess.run([sys.executable, "-c", _CHILD, "0", str(counter), *argv], env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    return done, int(counter.read_text()) if counter.is_file() else 0


def run_and_kill_at_event(argv: list[str], env: dict[str, str], event: int) -> bool:
    """Run `egds argv`, killed at its `event`-th durable step; True if the kill landed."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(event), os.devnull, *argv], env=env,
                          capture_output=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    return done.returncode == -signal.SIGKILL


def run_and_kill(argv: list[str], env: dict[str, str], delay: float) -> bool:
    """Start `egds argv`, SIGKILL it after `delay` seconds; True if it was still running (the kill landed)."""
    process = subprocess.Popen([str(EGDS), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        return True


def campaign(operation: Operation, workdir: Path, env: dict[str, str], kills: int, seed: int,
             new_trial: Callable[[Path], Trial]) -> Scoreboard:
    """Run one clean trial, then `kills` killed trials of `operation`; return the scoreboard."""
    board = Scoreboard(operation.name)
    clean = new_trial(workdir / "clean")
    operation.prepare(clean)
    started = time.monotonic()
    done = egds(operation.argv(clean), env)
    duration = time.monotonic() - started
    if done.returncode != 0:
        board.failures.append(f"the clean run failed ({done.returncode}): {done.stderr.strip()}")
        return board
    expected = _portable(operation.outcome(clean), clean)
    counted = new_trial(workdir / "counted")
    operation.prepare(counted)
    done, events = count_events(operation.argv(counted), env, workdir)
    if done.returncode != 0 or events == 0:
        board.failures.append(f"the counting run failed ({done.returncode}, {events} events): {done.stderr.strip()}")
        return board
    shutil.rmtree(counted.root, ignore_errors=True)
    # Two kinds of moments, alternating: a durable step drawn at random (every rename, fsync, unlink
    # and network send is a moment where the state on disk or on the remote changes), and a wall-clock
    # delay drawn from the end of start-up to the end of the clean run (between steps, mid-computation).
    started = time.monotonic()
    egds(["--version"], env)
    startup = min(time.monotonic() - started, duration)
    rng = random.Random(seed)
    for k in range(kills):
        trial = new_trial(workdir / f"trial-{k}")
        operation.prepare(trial)
        board.faults += 1
        if k % 2 == 0:
            event = rng.randint(1, events)
            moment = f"killed at durable step {event} of {events}"
            landed = run_and_kill_at_event(operation.argv(trial), env, event)
        else:
            delay = rng.uniform(0.8 * startup, duration)
            moment = f"killed after {delay:.3f} s of ~{duration:.3f} s"
            landed = run_and_kill(operation.argv(trial), env, delay)
        board.landed += landed
        where = f"{operation.name} trial {k} ({moment})"
        problems = operation.invariants(trial)
        lost = operation.lost_bytes(trial)
        board.bytes_lost += lost
        board.refs_to_missing_data += sum("names missing" in p for p in problems)
        rerun = egds((operation.rerun_argv or operation.argv)(trial), env)
        if rerun.returncode != 0:
            problems.append(f"the re-run failed ({rerun.returncode}): {rerun.stderr.strip()[:300]}")
        else:
            got = _portable(operation.outcome(trial), trial)
            if got != expected:
                differing = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
                problems.append(f"the re-run's outcome differs from a clean run's in {differing[:5]}")
        if lost:
            problems.append(f"{lost} bytes of referenced data were lost")
        if problems:
            board.failures.extend(f"{where}: {p}" for p in problems)
        else:
            board.survived += 1
        shutil.rmtree(trial.root, ignore_errors=True)
    return board


def _portable(files: dict[str, bytes], trial: Trial) -> dict[str, bytes]:
    """Outcomes of different trials name their own directories (a card's clone URL, remotes.json):
    compare them with the trial's path replaced by a placeholder."""
    root = str(trial.root).encode()
    item = trial.identifier.encode() or root
    return {name: data.replace(root, b"<trial>").replace(item, b"<item>") for name, data in files.items()}


# ---- checks shared by the operations ---------------------------------------------------------------


def referenced_bytes_missing(root: Path) -> int:
    """Bytes of partition objects that a local ref reaches but that are missing or damaged."""
    if not (root / ".egds" / "config.json").is_file():
        return 0
    store = root / ".egds"
    lost = 0
    heads = [p.read_text("ascii", "replace").strip() for p in (store / "refs").rglob("*") if p.is_file()
             and not p.name.startswith(".")]
    seen: set[str] = set()
    for head in heads:
        current: str | None = head if is_object_id(head) else None
        while current is not None and current not in seen:
            seen.add(current)
            path = store / "manifests" / f"{current}.json"
            if not path.is_file() or hash_bytes(path.read_bytes()) != current:
                break  # a missing manifest is counted as a ref to missing data by the invariants
            manifest = decode_manifest(path.read_bytes(), current[:12])
            for p in manifest.partitions:
                obj = store / "objects" / p.object[:2] / f"{p.object}{PARQUET}"
                if not obj.is_file() or hash_bytes(obj.read_bytes()) != p.object:
                    lost += p.bytes
            current = manifest.parent
    return lost


def verify_problems(root: Path) -> list[str]:
    try:
        report = Repository.open(root).verify()
    except Exception as exc:  # an unreadable repository is itself the finding
        return [f"verify could not run: {type(exc).__name__}: {exc}"]
    return [f"verify: {p}" for p in report.problems]


def cache_version(cache: Path, candidates: dict[str, Path | None]) -> str | None:
    """Which of `candidates` (name -> a reference cache) the cache equals, byte for byte, after egds
    completed any journal it left; None when it equals none of them."""
    file_digests(cache)  # completes a committed journal / drops uncommitted temp files, as any command does
    mine = {name: _read(cache / name) for name in CACHE_FILES}
    for name, reference in candidates.items():
        if mine == {n: _read(reference / n) if reference is not None else None for n in CACHE_FILES}:
            return name
    return None


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def silent_revert(root: Path) -> str | None:
    """Snapshot whatever the kill left: a new version whose content equals an older one is a silent revert."""
    repo = Repository.open(root)
    before = repo.head()
    try:
        result = repo.snapshot("after a kill")
    except Exception:
        return None  # a refusal is the safe answer
    if not result.created:
        return None
    new = repo.manifest(result.id)
    repo.store.write_ref("main", before)  # put it back: the re-run must start from the killed state
    for manifest_id in repo.store.manifest_ids():
        old = repo.manifest(manifest_id)
        if manifest_id != result.id and _content(old) == _content(new):
            return (f"a snapshot after the kill recorded v{new.version} with the content of an existing version "
                    f"(v{old.version}, {manifest_id[:12]}): a silent revert or a duplicate of unfinished work")
    return None


def _content(m: Any) -> tuple:
    return (m.dtype, m.dim, tuple((p.key, p.content_hash) for p in m.partitions), m.row_order, m.extras, m.index)


def remote_ref_problems(files: dict[str, bytes], where: str) -> list[str]:
    """The remote's ref and the chain it reaches, checked against the files it really holds."""
    ref = files.get(REF_KEY)
    if ref is None:
        return []
    head = ref.decode("ascii", "replace").strip()
    if not is_object_id(head):
        return [f"{where}: the ref is damaged ({ref[:70]!r})"]
    problems = []
    current: str | None = head
    seen: set[str] = set()
    while current is not None and current not in seen:
        seen.add(current)
        data = files.get(manifest_key(current))
        if data is None or hash_bytes(data) != current:
            return [f"{where}: the ref names missing data (manifest {current[:12]})"]
        manifest = decode_manifest(data, f"manifest {current[:12]}")
        needed = [(p.object, PARQUET) for p in manifest.partitions]
        needed += [(i, JSON) for i in (manifest.extras, manifest.index) if i is not None]
        for object_id, suffix in needed:
            body = files.get(object_key(object_id, suffix))
            if body is None or hash_bytes(body) != object_id:
                problems.append(f"{where}: the ref names missing data (object {object_id[:12]}{suffix} of v{manifest.version})")
        current = manifest.parent
    return problems


def directory_files(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def repository_files(root: Path) -> dict[str, bytes]:
    """`.egds/` as a comparable tree: without the lock (it holds a pid) and state.json (absolute paths),
    holdings records as sorted lines (their order depends on upload completion order)."""
    found = {}
    for name, data in directory_files(root / ".egds").items():
        # A kill may leave temp files in the local repository: SPEC §10 allows them (verify notes
        # them, gc removes them); they are not part of what a command produces. (On a remote they
        # are not allowed: remote outcomes keep every file.)
        if name in ("lock", "state.json") or name.startswith("tmp/") or _is_temp(name):
            continue
        if name.endswith(".known"):
            data = _holdings(data)
        found[name] = data
    return found


def _holdings(data: bytes) -> bytes:
    """A holdings record as what it says (each key's last state), without its times and its order:
    two runs that know the same about a remote compare equal."""
    last: dict[bytes, bytes] = {}
    for line in data.splitlines():
        if not line or line.startswith(b"#"):
            continue
        parts = line.split(b" ", 2)
        state, key = (parts[0], parts[2]) if len(parts) == 3 else (b"U", line)
        last[key] = state
    return b"\n".join(state + b" " + key for key, state in sorted(last.items()))


def remote_files(root: Path) -> dict[str, bytes]:
    """A directory remote's files; its lock file holds the last holder's pid and host, so only its
    presence is compared."""
    return {name: (b"<lock>" if name == "egds/lock" else data) for name, data in directory_files(root).items()}


def _is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(".tmp")


def cache_files(cache: Path) -> dict[str, bytes]:
    return {f"cache/{name}": data for name in CACHE_FILES if (data := _read(cache / name)) is not None}


def dump_scoreboards(boards: list[Scoreboard], path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps([b.__dict__ for b in boards], indent=2))
