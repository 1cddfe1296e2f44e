"""An in-memory remote: the reference behaviour for the conformance suite, and fast tests."""

from __future__ import annotations

import hashlib
import threading

from .base import RefMoved, RemoteFile, UploadSource, too_large


class MemoryRemote:
    listing_is_immediate = True

    def __init__(self, name: str = "memory") -> None:
        self.url = f"memory:{name}"
        self.files: dict[str, bytes] = {}
        self.puts: list[str] = []
        """Every key put, in order (tests assert on what was uploaded)."""
        self._lock = threading.Lock()

    def inventory(self) -> dict[str, RemoteFile]:
        with self._lock:
            return {k: RemoteFile(size=len(v), md5=hashlib.md5(v).hexdigest()) for k, v in self.files.items()}

    def get(self, key: str, max_bytes: int) -> bytes | None:
        with self._lock:
            data = self.files.get(key)
        if data is not None and len(data) > max_bytes:
            raise too_large(self.url, key, max_bytes)
        return data

    def put(self, key: str, source: bytes | UploadSource) -> None:
        data = source.read_verified() if isinstance(source, UploadSource) else bytes(source)
        with self._lock:
            self.files[key] = data
            self.puts.append(key)

    def put_ref(self, key: str, data: bytes, expected: bytes | None) -> None:
        with self._lock:  # a true compare-and-swap: the lock covers the read and the write
            current = self.files.get(key)
            if current != expected:
                raise RefMoved(f"{self.url}: {key} changed while pushing")
            self.files[key] = bytes(data)
            self.puts.append(key)

    def check_writable(self) -> None:
        pass

    def describe(self) -> str:
        return self.url


_REGISTRY: dict[str, MemoryRemote] = {}
_REGISTRY_LOCK = threading.Lock()


def memory_remote(name: str) -> MemoryRemote:
    """The process-wide memory remote called `name` (URL `memory:name`), created on first use."""
    with _REGISTRY_LOCK:
        return _REGISTRY.setdefault(name, MemoryRemote(name))
