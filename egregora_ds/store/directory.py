"""A remote that is a plain directory (a USB disk, a mounted share): `/path` or `file:///path`."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..atomic import atomic_write_bytes
from .base import READ_BLOCK, RefMoved, RemoteAuthError, RemoteError, RemoteFile, UploadSource, too_large


class DirectoryRemote:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

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
        # Not yet a true compare-and-swap: re-read and compare, then write.
        current = self.get(key, max_bytes=4096)
        if current != expected:
            raise RefMoved(f"{self.url}: {key} changed while pushing")
        self.put(key, data)

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
