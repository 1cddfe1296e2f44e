"""The remote protocol: the handful of operations a backend must offer, and nothing else.

Keys are `/`-separated paths relative to the remote's root (SPEC.md, "Remote layout"). A backend
keeps its quirks (retries, listings, auth) inside its own module; callers only see `RemoteError`
subclasses with one-line messages.

Two rules every backend keeps, because a remote is read by strangers and written by us:
- reads are bounded: `get` never returns (or buffers) more than the caller's `max_bytes`, so a
  hostile or damaged remote cannot exhaust memory;
- an uploaded object is verified on its way out: `put` of an `UploadSource` consumes its bytes
  through `chunks()` (or `verified_md5()`), which hash them as they are read, and the key becomes
  visible only after the whole source verified. A local object damaged on disk is never published.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import blake3
import msgspec

from ..errors import CorruptObject, EgdsError
from ..ids import short

READ_BLOCK = 1 << 20


class RemoteError(EgdsError):
    """A remote could not be read or written."""


class RemoteAuthError(RemoteError):
    """Writing needs credentials the user has not given."""


class RefMoved(RemoteError):
    """A compare-and-swap of a remote ref failed: someone else moved it first."""


class RemoteFile(msgspec.Struct, frozen=True):
    size: int
    md5: str | None = None


class UploadSource:
    """A local object on its way to a remote: its file and its name (the blake3 of its bytes).

    Every byte a backend sends is read through `chunks()` (or hashed by `verified_md5()` first), so
    the bytes that leave are the bytes that were checked; a mismatch raises CorruptObject naming the
    object before the upload is made visible under its key."""

    def __init__(self, path: Path, object_id: str, suffix: str) -> None:
        self.path = path
        self.object_id = object_id
        self.suffix = suffix

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def label(self) -> str:
        return f"object {short(self.object_id)}{self.suffix}"

    def _corrupt(self, actual: str) -> CorruptObject:
        return CorruptObject(
            f"local {self.label()} is corrupt (its bytes hash to {short(actual)}), so it was not uploaded and the "
            f"remote ref was not moved; run `egds verify` to list the damage, then restore the object from another "
            f"copy (`egds pull` from a remote that has it, or copy {self.path.name} from a backup) and push again"
        )

    def chunks(self, block: int = READ_BLOCK) -> Iterator[bytes]:
        """The file's bytes in order, hashed as they pass; after the last one, CorruptObject if they
        do not hash to the object's name. A backend must consume every chunk before it makes the
        upload visible (a directory renames its temp file only after this generator is exhausted)."""
        hasher = blake3.blake3()
        with open(self.path, "rb") as source:
            while piece := source.read(block):
                hasher.update(piece)
                yield piece
        actual = hasher.hexdigest()
        if actual != self.object_id:
            raise self._corrupt(actual)

    def verified_md5(self) -> str:
        """One pass over the file computing blake3 and md5 together; CorruptObject on a blake3
        mismatch, else the md5 hex. For backends that must send a digest before the body (IA-S3's
        Content-MD5): the server then refuses any bytes other than the ones verified here."""
        md5 = hashlib.md5()
        for piece in self.chunks():
            md5.update(piece)
        return md5.hexdigest()

    def read_verified(self) -> bytes:
        """The whole object in memory, verified (for small objects and in-memory backends)."""
        return b"".join(self.chunks())


class Remote(Protocol):
    url: str
    """Canonical URL of the remote (`/abs/path`, `ia:identifier`, …), used in messages."""

    def inventory(self) -> dict[str, RemoteFile]:
        """Every key the remote holds, in as few requests as the backend allows (IA: one)."""
        ...

    def get(self, key: str, max_bytes: int) -> bytes | None:
        """The bytes stored under `key`, or None if there is no such key. Callers verify hashes.

        Raises RemoteError (naming the key, never echoing its content) if the value is larger than
        `max_bytes`; never reads more than `max_bytes + 1` bytes of it."""
        ...

    def put(self, key: str, source: bytes | UploadSource) -> None:
        """Store `source` under `key`. Replaces an existing key; must not leave a partial file
        visible under `key` (a directory writes a temp file and renames; IA-S3 PUTs are whole).
        An `UploadSource` is read through its verifying `chunks()`/`verified_md5()` (module doc)."""
        ...

    def put_ref(self, key: str, data: bytes, expected: bytes | None) -> None:
        """Replace `key` with `data` only if it still holds `expected` (None: the key is absent);
        otherwise raise RefMoved. Backends with a compare-and-swap use it; those without one
        (archive.org) re-read and compare immediately before writing (SPEC.md §14.2)."""
        ...

    def check_writable(self) -> None:
        """Raise RemoteAuthError before any upload if writing cannot succeed (missing keys)."""
        ...

    def describe(self) -> str:
        """A human-facing location, e.g. an item URL."""
        ...


def too_large(url: str, key: str, max_bytes: int) -> RemoteError:
    """The error every backend raises for a value over its caller's bound."""
    return RemoteError(
        f"{url}: {key} is larger than the {max_bytes:,} bytes egds expects of it, so it was not read; the remote is "
        "damaged or hostile: report it to the remote's owner, or re-push from a good copy"
    )
