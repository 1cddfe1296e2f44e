"""A remote that is a plain directory (a USB disk, a mounted share): `/path` or `file:///path`.

Writers serialize on `egds/lock` (SPEC.md §14.2): push holds an exclusive `flock` on it from its plan
to its last write, so the ref's compare-and-swap is a true one (read, compare and rename under the
lock) and a pusher sees the ref the previous one left. The kernel drops the lock when its holder
dies, so a killed push never blocks the next; the temp files it left are removed by the next holder.
`fcntl` does not exist on Windows: there the lock is skipped and the swap is a re-read and compare.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from ..atomic import atomic_write_bytes
from .base import READ_BLOCK, RefMoved, RemoteAuthError, RemoteError, RemoteFile, UploadSource, too_large

try:
    import fcntl
except ImportError:  # Windows: no flock (see the module doc)
    fcntl = None  # type: ignore[assignment]

LOCK_KEY = "egds/lock"
#: How long a push waits for another push to the same directory to finish before giving up.
LOCK_WAIT = 300.0
# Temp files egds's atomic writes leave when killed: `.NAME.XXXXXXXX.tmp` (tempfile.mkstemp), where
# NAME is a key's last part. Only these are ever removed: a name egds never writes is not ours.
_OWN_TEMP_IN_EGDS = re.compile(r"\.(?:[0-9a-f]{64}\.(?:parquet|json)|main|card\.json)\.[a-z0-9_]+\.tmp")
_OWN_TEMP_AT_ROOT = re.compile(r"\.(?:README\.md|manifest\.json)\.[a-z0-9_]+\.tmp")


class RemoteBusy(RemoteError):
    """Another push holds the remote's lock: nothing is wrong, try again when it is done."""

    exit_code = 75


class DirectoryRemote:
    listing_is_immediate = True
    """A file is listed by `inventory()` as soon as `put()` returns (see push's listing check)."""

    def __init__(self, root: Path, *, lock_wait: float = LOCK_WAIT) -> None:
        self.root = root
        self.url = str(root)
        self.lock_wait = lock_wait
        self._lock_depth = 0

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*self._parts(key))

    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") or "\0" in part for part in parts):
            raise RemoteError(f"refusing remote key {key!r}: not a plain relative path")
        return parts

    def inventory(self) -> dict[str, RemoteFile]:
        """Every regular file under the root. Symbolic links, FIFOs, sockets and devices are not
        files of the remote (`get` refuses them too), and nothing is ever opened or followed, so a
        hostile tree can neither hang nor redirect the listing."""
        if not self.root.exists():
            return {}
        if not self.root.is_dir():
            raise RemoteError(f"remote {self.root} is not a directory; use a directory path (or ia:IDENTIFIER) for the remote")
        found: dict[str, RemoteFile] = {}
        pending = [(str(self.root), "")]
        while pending:  # scandir, not os.walk + stat: one lstat per entry, none followed
            directory, prefix = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue  # removed or unreadable while listing
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file(follow_symlinks=False):
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        continue  # an upload in progress (or killed): not part of the remote
                    try:
                        found[prefix + entry.name] = RemoteFile(size=entry.stat(follow_symlinks=False).st_size)
                    except OSError:
                        continue
        return found

    def get(self, key: str, max_bytes: int) -> bytes | None:
        """The bytes of the regular file under `key` (SPEC.md §14.1, "Reading a directory remote").

        Every component below the root is opened with O_NOFOLLOW (a symbolic link anywhere inside the
        remote is refused, so no read leaves it), the file with O_NONBLOCK (a FIFO cannot hang the
        open) and then checked to be a regular file with fstat; at most max_bytes + 1 bytes are read,
        in blocks, whatever size the file claims; errors name the key, never its content."""
        parts = self._parts(key)
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._read_error(key, exc) from None
        fds = [root_fd]
        try:
            for part in parts[:-1]:
                fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fds[-1]))
            fds.append(os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fds[-1]))
            status = os.fstat(fds[-1])
            if not stat.S_ISREG(status.st_mode):
                if stat.S_ISDIR(status.st_mode):
                    return None  # the key is only a folder: no file under it, as inventory() says
                raise RemoteError(
                    f"{self.url}: {key} is not a regular file (a FIFO, socket or device), so it was not read; the "
                    "remote is damaged or hostile: report it to the remote's owner, or re-push from a good copy"
                )
            if status.st_size > max_bytes:
                raise too_large(self.url, key, max_bytes)
            return _read_at_most(fds[-1], max_bytes, self.url, key)
        except FileNotFoundError:
            # No file under this key (a parent is missing): missing, as inventory() would say and as
            # the other backends answer, not an I/O failure.
            return None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR and not self._is_link(parts):
                return None  # a parent is a plain file: no such key
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RemoteError(
                    f"{self.url}: {key} is (or lies below) a symbolic link, which egds never follows inside a "
                    "directory remote, so it was not read; replace the link with the file itself, or re-push from a "
                    "good copy"
                ) from None
            raise self._read_error(key, exc) from None
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def _is_link(self, parts: list[str]) -> bool:
        """Whether a component of the key's path is a symbolic link (O_DIRECTORY|O_NOFOLLOW on a link
        fails with ENOTDIR, like a plain file would)."""
        path = self.root
        for part in parts:
            path = path / part
            try:
                if stat.S_ISLNK(path.lstat().st_mode):
                    return True
            except OSError:
                return False
        return False

    def _read_error(self, key: str, exc: OSError) -> RemoteError:
        return RemoteError(f"cannot read {key} from {self.root}: {exc.strerror}; check the disk is mounted and readable")

    def put(self, key: str, source: bytes | UploadSource) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # An UploadSource's chunks are verified as they are copied; the temp file is renamed
            # into place only after the last one, so a damaged local object never appears here.
            atomic_write_bytes(target, source.chunks() if isinstance(source, UploadSource) else source)
        except OSError as exc:
            raise RemoteError(f"cannot write {key} to {self.root}: {exc.strerror or exc}; check the disk is mounted, writable and not full") from None

    def put_ref(self, key: str, data: bytes, expected: bytes | None) -> None:
        # A true compare-and-swap among egds writers: all of them write under the lock.
        with self.locked():
            current = self.get(key, max_bytes=4096)
            if current != expected:
                raise RefMoved(f"{self.url}: {key} changed while pushing")
            self.put(key, data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the remote's write lock (`egds/lock`), waiting up to `lock_wait` seconds for another
        holder. Re-entrant within this object, so `put_ref` inside a push's lock does not deadlock."""
        if self._lock_depth or fcntl is None:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        path = self._path(LOCK_KEY)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RemoteError(f"cannot lock {self.root} for writing ({path}: {exc.strerror or exc}); check the disk is mounted and writable") from None
        try:
            self._acquire(fd, path)
            # Who holds it, for the message another pusher gets (the lock itself is the flock).
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _acquire(self, fd: int, path: Path) -> None:
        deadline = time.monotonic() + self.lock_wait
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:  # e.g. ENOLCK: a network file system without its lock service
                raise RemoteError(
                    f"cannot lock {path} ({exc.strerror or exc}); push to a local disk, or a share whose file "
                    "locks work (NFS needs its lock service)"
                ) from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise RemoteBusy(
                    f"another egds push to {self.root} holds its lock (pid and host: {holder}); wait for it to "
                    f"finish, then run the push again"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    def own_temp_files(self) -> list[Path]:
        """Temp files egds's own writes left here when killed (see _OWN_TEMP_*)."""
        found = [p for p in self.root.glob(".*.tmp") if _OWN_TEMP_AT_ROOT.fullmatch(p.name)] if self.root.is_dir() else []
        egds = self.root / "egds"
        if egds.is_dir():
            for dirpath, _, filenames in os.walk(egds):
                found += [Path(dirpath) / n for n in filenames if _OWN_TEMP_IN_EGDS.fullmatch(n)]
        return [p for p in found if p.is_file() and not p.is_symlink()]

    def remove_own_temp_files(self) -> tuple[int, int]:
        """Remove what killed writes left behind: (files, bytes). Only under the lock, so no live
        writer's temp file can be among them (every egds writer to a directory remote holds it)."""
        if not self._lock_depth and fcntl is not None:
            raise RuntimeError("remove_own_temp_files needs the remote's lock")
        files = nbytes = 0
        for path in self.own_temp_files():
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            files, nbytes = files + 1, nbytes + size
        return files, nbytes

    def check_writable(self) -> None:
        """The remote, or the nearest existing directory above it (where push will create it), is writable."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise RemoteError(
                f"remote {self.root} cannot be created: {probe} is a file, not a directory; use another path for the remote"
            )
        if not os.access(probe, os.W_OK | os.X_OK):
            raise RemoteAuthError(f"remote directory {self.root} is not writable by this user ({probe}); check its permissions")

    def describe(self) -> str:
        return str(self.root)



def _read_at_most(fd: int, max_bytes: int, url: str, key: str) -> bytes:
    """Up to max_bytes of an open file, in blocks (never a max_bytes-sized buffer up front: a caller's
    bound may be far larger than memory); RemoteError if the file holds more."""
    pieces = []
    total = 0
    while True:
        piece = os.read(fd, min(READ_BLOCK, max_bytes + 1 - total))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        total += len(piece)
        if total > max_bytes:
            raise too_large(url, key, max_bytes)
