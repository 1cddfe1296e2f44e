"""The repository's local store: hash-named objects and manifests, refs, the write lock.

Layout under `.egds/` (SPEC.md, "Repository layout"):
    config.json  objects/ab/<id>.parquet|.json  manifests/<id>.json  refs/main  refs/tags/<name>
    tmp/  lock  state.json
Every write is atomic (temp + fsync + rename); every read of an object or manifest re-hashes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path


from ..atomic import atomic_write_bytes, fsync_dir
from ..errors import CorruptObject, LockHeld, MissingObject
from ..ids import JSON, PARQUET, fanout_path, hash_bytes, hash_file, is_object_id, short

OBJECT_SUFFIXES = (PARQUET, JSON)
#: The repository locks this thread holds (by real path), so a nested `locked()` does not deadlock.
_LOCKS_HELD = threading.local()


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects_dir = root / "objects"
        self.manifests_dir = root / "manifests"
        self.refs_dir = root / "refs"
        self.tmp_dir = root / "tmp"

    def create_layout(self) -> None:
        for directory in (self.root, self.objects_dir, self.manifests_dir, self.refs_dir / "tags", self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # ---- objects -------------------------------------------------------------------------------

    def object_path(self, object_id: str, suffix: str) -> Path:
        return self.objects_dir / fanout_path(object_id, suffix)

    def has_object(self, object_id: str, suffix: str) -> bool:
        return self.object_path(object_id, suffix).is_file()

    def temp_path(self, suffix: str) -> Path:
        """A fresh temp file name on the objects' filesystem (so the final rename is atomic)."""
        return self.tmp_dir / f"{os.getpid()}-{os.urandom(8).hex()}{suffix}"

    def commit_object_file(self, temp: Path, suffix: str) -> tuple[str, int]:
        """Name a finished temp file by the hash of its bytes and move it into place."""
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        object_id = hash_file(temp)
        size = temp.stat().st_size
        final = self.object_path(object_id, suffix)
        if final.is_file():
            temp.unlink()  # same bytes already stored: objects are immutable, keep the old file
            return object_id, size
        final.parent.mkdir(exist_ok=True)
        os.replace(temp, final)
        fsync_dir(final.parent)
        return object_id, size

    def put_object_bytes(self, data: bytes | memoryview, suffix: str, verified_id: str | None = None) -> str:
        """Store `data` under the hash of its bytes. `verified_id`: the caller has just hashed these
        very bytes (a download checked against its name), so they are not hashed a second time."""
        object_id = verified_id if verified_id is not None else hash_bytes(data)
        final = self.object_path(object_id, suffix)
        if not final.is_file():
            final.parent.mkdir(exist_ok=True)
            atomic_write_bytes(final, data)
        return object_id

    def read_object(self, object_id: str, suffix: str, what: str = "") -> bytes:
        """The object's bytes, re-hashed; a mismatch is an error naming the object (and `what`)."""
        path = self.object_path(object_id, suffix)
        label = f"object {short(object_id)}{suffix}" + (f" ({what})" if what else "")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MissingObject(f"{label} is missing from {self.objects_dir}; run `egds verify`") from None
        actual = hash_bytes(data)
        if actual != object_id:
            raise CorruptObject(
                f"{label} is corrupt: its bytes hash to {short(actual)}; nothing was written. "
                "Restore it from a remote or another copy (`egds verify` lists all damage)"
            )
        return data

    def iter_objects(self) -> Iterator[tuple[str, str, Path]]:
        """(id, suffix, path) of every stored object; files with other names are skipped."""
        if not self.objects_dir.is_dir():
            return
        for fan in sorted(self.objects_dir.iterdir()):
            if not fan.is_dir():
                continue
            for path in sorted(fan.iterdir()):
                for suffix in OBJECT_SUFFIXES:
                    stem = path.name[: -len(suffix)]
                    if path.name.endswith(suffix) and is_object_id(stem) and stem[:2] == fan.name:
                        yield stem, suffix, path

    def stray_files(self) -> list[Path]:
        """Files under objects/ that are not named like objects (left by hand or by other tools)."""
        named = {path for _, _, path in self.iter_objects()} | set(self.temp_files())
        if not self.objects_dir.is_dir():
            return []
        return [p for p in sorted(self.objects_dir.rglob("*")) if p.is_file() and p not in named]

    def temp_files(self) -> list[Path]:
        """Leftovers of interrupted commands: partition files in tmp/, and the `.NAME.XXXX.tmp`
        files `atomic_write_bytes` creates next to refs, manifests, JSON objects and state.json.
        A process killed before its rename cannot remove the latter, and they are not in tmp/, so
        gc (which runs under the write lock, when no writer is alive) must look for them too."""
        found = [p for p in self.tmp_dir.iterdir() if p.is_file()] if self.tmp_dir.is_dir() else []
        for directory in (self.root, self.manifests_dir):
            if directory.is_dir():
                found.extend(directory.glob(".*.tmp"))
        for directory in (self.refs_dir, self.objects_dir):
            if directory.is_dir():
                found.extend(directory.rglob(".*.tmp"))
        return sorted(p for p in found if p.is_file())

    # ---- manifests -----------------------------------------------------------------------------

    def manifest_path(self, manifest_id: str) -> Path:
        return self.manifests_dir / f"{manifest_id}.json"

    def put_manifest(self, data: bytes) -> str:
        manifest_id = hash_bytes(data)
        path = self.manifest_path(manifest_id)
        if not path.is_file():
            atomic_write_bytes(path, data)
        return manifest_id

    def read_manifest_bytes(self, manifest_id: str) -> bytes:
        path = self.manifest_path(manifest_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MissingObject(f"manifest {short(manifest_id)} is missing from {self.manifests_dir}") from None
        if hash_bytes(data) != manifest_id:
            raise CorruptObject(f"manifest {short(manifest_id)} is corrupt (its bytes do not match its name); run `egds verify`")
        return data

    def manifest_ids(self) -> list[str]:
        if not self.manifests_dir.is_dir():
            return []
        return sorted(p.name[:-5] for p in self.manifests_dir.glob("*.json") if is_object_id(p.name[:-5]))

    # ---- refs ----------------------------------------------------------------------------------

    def ref_path(self, name: str) -> Path:
        return self.refs_dir / name

    def read_ref(self, name: str) -> str | None:
        """The manifest id a ref names, or None if the ref does not exist."""
        path = self.ref_path(name)
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, OSError):
            text = "<unreadable>"
        if not is_object_id(text):
            raise CorruptObject(
                f"ref {path} is damaged (expected a 64-hex manifest id); run `egds verify`, then "
                "`egds tag`/snapshot to repair it or restore it from a backup"
            )
        return text

    def write_ref(self, name: str, manifest_id: str) -> None:
        if not is_object_id(manifest_id):
            raise ValueError(manifest_id)
        path = self.ref_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, f"{manifest_id}\n".encode())

    def delete_ref(self, name: str) -> None:
        self.ref_path(name).unlink(missing_ok=True)

    def ref_names(self, prefix: str) -> list[str]:
        base = self.refs_dir / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.refs_dir)) for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    # ---- lock ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The single-writer lock. flock is released by the kernel when the process dies, so a
        killed egds never leaves a stale lock behind. Re-entrant within a thread: pull holds it
        from its first read to its last ref and checks out inside it."""
        held = _LOCKS_HELD.__dict__.setdefault("roots", set())
        key = os.path.realpath(self.root)
        if key in held:
            yield
            return
        held.add(key)
        try:
            with self._flock():
                yield
        finally:
            held.discard(key)

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise LockHeld(
                    f"another egds process (pid {holder}) is writing to {self.root.parent}; "
                    "wait for it to finish and try again"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
