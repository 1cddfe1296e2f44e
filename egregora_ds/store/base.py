"""The remote protocol: the handful of operations a backend must offer, and nothing else.

Keys are `/`-separated paths relative to the remote's root (SPEC.md, "Remote layout"). A backend
keeps its quirks (retries, listings, auth) inside its own module; callers only see `RemoteError`
subclasses with one-line messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import msgspec

from ..errors import EgdsError


class RemoteError(EgdsError):
    """A remote could not be read or written."""


class RemoteAuthError(RemoteError):
    """Writing needs credentials the user has not given."""


class RemoteFile(msgspec.Struct, frozen=True):
    size: int
    md5: str | None = None


class Remote(Protocol):
    url: str
    """Canonical URL of the remote (`/abs/path`, `ia:identifier`, …), used in messages."""

    def inventory(self) -> dict[str, RemoteFile]:
        """Every key the remote holds, in as few requests as the backend allows (IA: one)."""
        ...

    def get(self, key: str) -> bytes | None:
        """The bytes stored under `key`, or None if there is no such key. Callers verify hashes."""
        ...

    def put(self, key: str, source: Path | bytes) -> None:
        """Store `source` under `key`. Replaces an existing key; must not leave a partial file
        visible under `key` (a directory writes a temp file and renames; IA-S3 PUTs are whole)."""
        ...

    def check_writable(self) -> None:
        """Raise RemoteAuthError before any upload if writing cannot succeed (missing keys)."""
        ...

    def describe(self) -> str:
        """A human-facing location, e.g. an item URL."""
        ...
