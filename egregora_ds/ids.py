"""Object identity: every object, manifest and content is named by the blake3 hex of its bytes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, BinaryIO

import blake3
import msgspec

HEX_LEN = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{4,64}")

#: A blake3 hex digest as it appears in manifests and refs; decoding validates it, so a
#: manifest that names `../x` or a non-hex id is rejected before it reaches a path.
ObjectId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]

#: The object kinds and the file suffix each is stored under.
PARQUET = ".parquet"
JSON = ".json"


def is_object_id(text: str) -> bool:
    return bool(_HEX64.fullmatch(text))


def is_id_prefix(text: str) -> bool:
    return bool(_HEX_PREFIX.fullmatch(text))


def short(object_id: str) -> str:
    """The 12-character form used in messages and tables."""
    return object_id[:12]


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO if len(data) > 1 << 22 else 1).hexdigest()


def hash_file(path: Path) -> str:
    """blake3 of a file's bytes, streamed (mmap) so large objects are never copied into memory."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.stat().st_size == 0:
        return hasher.hexdigest()
    hasher.update_mmap(path)
    return hasher.hexdigest()


def hash_stream(stream: BinaryIO, block: int = 1 << 20) -> str:
    hasher = blake3.blake3()
    while chunk := stream.read(block):
        hasher.update(chunk)
    return hasher.hexdigest()


def fanout_path(object_id: str, suffix: str) -> str:
    """`ab/abcdef….parquet`: a two-character fan-out keeps directories small, as git and restic do."""
    if not is_object_id(object_id):
        raise ValueError(f"not an object id: {object_id!r}")
    return f"{object_id[:2]}/{object_id}{suffix}"
