"""A remote that is a plain directory (a USB disk, a mounted share): `/path` or `file:///path`."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import atomic_write_bytes
from .base import RefMoved, RemoteAuthError, RemoteError, RemoteFile, UploadSource, too_large


class DirectoryRemote:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise RemoteError(f"refusing remote key {key!r}: not a plain relative path")
        return self.root.joinpath(*parts)

    def inventory(self) -> dict[str, RemoteFile]:
        if not self.root.exists():
            return {}
        if not self.root.is_dir():
            raise RemoteError(f"remote {self.root} is not a directory; use a directory path (or ia:IDENTIFIER) for the remote")
        found: dict[str, RemoteFile] = {}
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # an upload in progress (or killed): not part of the remote
                path = Path(dirpath) / name
                found[path.relative_to(self.root).as_posix()] = RemoteFile(size=path.stat().st_size)
        return found

    def get(self, key: str, max_bytes: int) -> bytes | None:
        try:
            with open(self._path(key), "rb") as source:
                data = source.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise too_large(self.url, key, max_bytes)
            return data
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # No file under this key (a parent is a file, or the key is only a folder): missing, as
            # inventory() would say and as the other backends answer, not an I/O failure.
            return None
        except OSError as exc:
            raise RemoteError(f"cannot read {key} from {self.root}: {exc.strerror}; check the disk is mounted and readable") from None

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

