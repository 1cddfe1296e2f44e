"""Durable, atomic file writes: temp file in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes | memoryview | Path | Iterable[bytes]) -> None:
    """Replace `path` with `data` (bytes, the contents of a file, or pieces written in order, all
    streamed) so that readers see the old or the new bytes, never a mix. If producing the pieces
    raises, the temp file is removed and `path` is untouched."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, Path):
                with open(data, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
            elif isinstance(data, (bytes, bytearray, memoryview)):
                out.write(data)
            else:
                for piece in data:
                    out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is not None or exc.errno is None:
            raise
        # os.write and fsync raise without a file name; "No space left on device" must say where.
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX: the directory entry lives in the directory's own data)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
