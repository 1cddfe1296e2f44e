"""The pickle cache on disk: a safe reader and an atomic, journaled writer.

Layout (the newsletter pipeline's): `embeddings.pkl` (pickle of a dict with key `embeddings` ->
numpy array (N, D)), `metadata.json` (`{"chunks": [...]}`), optional `index.json`.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import fcntl
import io
import json
import os
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import msgspec
import numpy as np

from .atomic import atomic_write_bytes, fsync_dir
from .errors import CacheError, UnsafePickle

EMBEDDINGS = "embeddings.pkl"
METADATA = "metadata.json"
INDEX = "index.json"
CACHE_FILES = (EMBEDDINGS, METADATA, INDEX)
_TMP_SUFFIX = ".egds-tmp"
JOURNAL = ".egds-checkout.json"

# Everything a pickled numpy array (protocols 0-5, numpy 1.x or 2.x) needs, and nothing that can
# run code: no builtins.eval, os.system, subprocess, functools.partial, etc.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    # Protocol 0-2 write empty bytes (an empty array's data) as a call of `bytes()`; only that
    # call is allowed (see _empty_bytes): `bytes(10**12)` would allocate a terabyte.
    ("builtins", "bytes"),
}
_NUMPY1_MODULES = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric"}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2 modules (`__builtin__.eval`, `commands.Popen` for
        # subprocess.Popen); map them as the stock unpickler would, so the check and the message
        # are about what would really be imported.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module = _NUMPY1_MODULES.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickle(
                f"{EMBEDDINGS} refers to {module}.{name}, which a numpy array does not need; refusing to load it "
                "(a pickle can run code). Re-create the cache with plain pickle.dump({'embeddings': array})"
            )
        if (module, name) == ("builtins", "bytes"):
            return _empty_bytes
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle(f"{EMBEDDINGS} uses persistent ids, which egds does not load")


def _empty_bytes(*args: Any) -> bytes:
    if args:
        raise UnsafePickle(f"{EMBEDDINGS} calls bytes() with arguments, which a numpy array does not need; refusing to load it")
    return b""


class _HashingReader(io.RawIOBase):
    """Hashes every byte the unpickler reads, so the digest is of exactly the bytes parsed."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self.hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.hasher.update(memoryview(buffer)[:n])
        return n

    def drain(self) -> str:
        """Hash whatever follows the pickle's STOP opcode, then return the file's digest."""
        while chunk := self._raw.read(1 << 20):
            self.hasher.update(chunk)
        return self.hasher.hexdigest()


@dataclass
class CacheContents:
    """A cache as read: the array, the chunk dicts and everything else, kept verbatim."""

    embeddings: np.ndarray
    chunks: list[dict[str, Any]]
    metadata_extra: dict[str, Any] = field(default_factory=dict)
    pickle_extra: dict[str, Any] = field(default_factory=dict)
    index_bytes: bytes | None = None
    digests: dict[str, str | None] = field(default_factory=dict)
    """blake3 of each cache file's bytes as read (None: file absent)."""


def read_cache(path: Path) -> CacheContents:
    """Read and validate the shape of a cache. Never executes code from the pickle."""
    with _cache_lock(path):
        _recover(path)
        return _read_cache(path)


def _read_cache(path: Path) -> CacheContents:
    if not path.is_dir():
        raise CacheError(
            f"cache directory {path} does not exist; check the path (the `cache` setting in .egds/config.json, "
            "or --cache) or run the pipeline to create it"
        )
    for name in (EMBEDDINGS, METADATA):
        if not (path / name).is_file():
            raise CacheError(
                f"cache file {path / name} is missing; the cache needs {EMBEDDINGS} and {METADATA} "
                "(re-run the pipeline, or `egds checkout --force` a version)"
            )
    # The unpickler mostly waits on reads and blake3 (both release the GIL) while decoding the JSON
    # holds it: loading the two files side by side takes about as long as the JSON alone.
    with ThreadPoolExecutor(max_workers=1) as loader:
        pickle_load = loader.submit(_load_pickle, path / EMBEDDINGS)
        try:
            metadata_bytes = (path / METADATA).read_bytes()
            metadata = decode_json(metadata_bytes, path / METADATA)
        finally:
            pickled, pickle_digest = pickle_load.result()  # its error (an unsafe pickle) comes first
    if not isinstance(pickled, dict) or "embeddings" not in pickled:
        kind = type(pickled).__name__
        what = "a dict without key 'embeddings'" if isinstance(pickled, dict) else f"a {kind}"
        raise CacheError(
            f"{path / EMBEDDINGS} holds {what}; it must be a dict with key 'embeddings' "
            "(write it as pickle.dump({'embeddings': array}, f))"
        )
    embeddings = pickled["embeddings"]
    _check_array(embeddings, path / EMBEDDINGS)
    pickle_extra = {k: v for k, v in pickled.items() if k != "embeddings"}
    for key, value in pickle_extra.items():
        if not isinstance(key, str) or not is_plain_json(value):
            raise CacheError(
                f"{path / EMBEDDINGS}: key {key!r} holds a {type(value).__name__}, which egds cannot store losslessly "
                "(only JSON values: str, int, float, bool, None, lists, dicts); remove it or convert it"
            )
    if not isinstance(metadata, dict) or not isinstance(metadata.get("chunks"), list):
        raise CacheError(f"{path / METADATA} must be a JSON object with a 'chunks' list")
    index_path = path / INDEX
    index_bytes = index_path.read_bytes() if index_path.is_file() else None
    if index_bytes is not None:
        decode_json(index_bytes, index_path)  # must at least be JSON; it is stored verbatim
    return CacheContents(
        embeddings=embeddings,
        chunks=metadata["chunks"],
        metadata_extra={k: v for k, v in metadata.items() if k != "chunks"},
        pickle_extra=pickle_extra,
        index_bytes=index_bytes,
        digests={
            EMBEDDINGS: pickle_digest,
            METADATA: blake3.blake3(metadata_bytes, max_threads=blake3.blake3.AUTO).hexdigest(),
            INDEX: None if index_bytes is None else blake3.blake3(index_bytes).hexdigest(),
        },
    )


def file_digests(path: Path) -> dict[str, str | None] | None:
    """blake3 of each cache file present, or None if the cache has no embeddings/metadata at all."""
    with _cache_lock(path):
        _recover(path)
        return _file_digests(path)


def _file_digests(path: Path) -> dict[str, str | None] | None:
    if not (path / EMBEDDINGS).is_file() and not (path / METADATA).is_file():
        return None
    digests: dict[str, str | None] = {}
    for name in CACHE_FILES:
        file = path / name
        if file.is_file():
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            if file.stat().st_size:
                hasher.update_mmap(file)
            digests[name] = hasher.hexdigest()
        else:
            digests[name] = None
    return digests


def _load_pickle(file: Path) -> tuple[Any, str]:
    with open(file, "rb") as raw:
        reader = _HashingReader(raw)
        buffered = io.BufferedReader(reader, buffer_size=1 << 20)
        try:
            obj = _NumpyOnlyUnpickler(buffered).load()
        except UnsafePickle:
            raise
        except Exception as exc:  # a truncated or foreign file: pickle raises many types
            raise CacheError(
                f"{file} is not a readable pickle ({type(exc).__name__}: {exc}); re-create it with the pipeline "
                "or `egds checkout --force` a version"
            ) from None
        # BufferedReader may have read ahead past STOP; those bytes are already hashed.
        return obj, reader.drain()


def _check_array(embeddings: Any, file: Path) -> None:
    if not isinstance(embeddings, np.ndarray):
        raise CacheError(
            f"{file}: 'embeddings' is a {type(embeddings).__name__}, not a numpy array; "
            "convert it with numpy.asarray(..., dtype='float32') before pickling"
        )
    if embeddings.ndim != 2:
        raise CacheError(
            f"{file}: 'embeddings' has shape {embeddings.shape}; expected 2-D (rows, dimension): reshape it"
        )
    if embeddings.dtype.kind != "f" or embeddings.dtype.itemsize not in (2, 4, 8):
        raise CacheError(
            f"{file}: 'embeddings' has dtype {embeddings.dtype}; expected float16, float32 or float64 "
            "(convert it with .astype('float32'))"
        )
    if embeddings.shape[1] == 0:
        raise CacheError(f"{file}: 'embeddings' has dimension 0; every row needs at least one value (re-run the embedding step)")


def decode_json(data: bytes, file: Path) -> Any:
    """The JSON value of a cache file: what Python's json.loads gives (SPEC.md §6.1). msgspec is the
    fast path; it refuses a few things json.loads accepts (NaN/Infinity, 1e400, a BOM, UTF-16)."""
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter for invalid UTF-8
        pass  # stdlib json also accepts NaN/Infinity and huge exponents, as json.dump writes them
    except RecursionError:
        raise _too_deep(file) from None
    try:
        return json.loads(data)
    except RecursionError:
        raise _too_deep(file) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{file} is not valid JSON ({exc}); fix it or re-create it with the pipeline") from None
    except ValueError:  # Python refuses to convert an integer of more than 4300 digits
        raise CacheError(
            f"{file} holds an integer longer than 4300 digits, which egds cannot store; shorten or remove it"
        ) from None


def _too_deep(file: Path) -> CacheError:
    return CacheError(
        f"{file} nests arrays/objects too deeply (past Python's recursion limit, about 1000 levels) "
        "for egds to store; flatten it"
    )


def encode_json(value: Any) -> bytes:
    """Compact JSON exactly as Python's json.dumps writes it (SPEC.md §6): NaN/Infinity tokens,
    integers of any size, floats as repr(). Non-ASCII characters are written as UTF-8, unless a
    lone surrogate (which UTF-8 cannot carry) is among them: then the whole text is \\u-escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def is_plain_json(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if not all(type(k) is str for k in item):
                return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif item is not None and kind not in (str, int, float, bool):
            return False
    return True


class _HashingWriter:
    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")  # pickle hands over the array's own buffer (format 'f', 2-D)
        self.hasher.update(view)
        return self._raw.write(view)


def write_cache(
    path: Path,
    embeddings: np.ndarray,
    pickle_extra: dict[str, Any],
    metadata: bytes | Sequence[memoryview],
    index_bytes: bytes | None,
) -> dict[str, str | None]:
    """Replace the cache files as one unit; return the blake3 of each file written.

    `metadata` is metadata.json's bytes, or pieces of them written in order. All new files are
    written and fsynced under temporary names first; a journal then lists the renames, so a
    process killed mid-way leaves either the old cache (before the journal) or a journal that the
    next egds command rolls forward (after it). The old cache is never half-replaced.
    """
    path.mkdir(parents=True, exist_ok=True)
    with _cache_lock(path):
        return _write_cache(path, embeddings, pickle_extra, metadata, index_bytes)


def _write_cache(
    path: Path,
    embeddings: np.ndarray,
    pickle_extra: dict[str, Any],
    metadata: bytes | Sequence[memoryview],
    index_bytes: bytes | None,
) -> dict[str, str | None]:
    _recover(path)
    digests: dict[str, str | None] = {}
    # The two big files are written side by side: writes, blake3 and fsync all release the GIL.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pickle_digest = writer.submit(_write_pickle, path / (EMBEDDINGS + _TMP_SUFFIX), embeddings, pickle_extra)
        try:
            pieces = [metadata] if isinstance(metadata, bytes) else metadata
            digests[METADATA] = _write_synced(path / (METADATA + _TMP_SUFFIX), pieces)
        finally:
            digests[EMBEDDINGS] = pickle_digest.result()
    renames = [EMBEDDINGS, METADATA]
    deletes = []
    if index_bytes is not None:
        digests[INDEX] = _write_synced(path / (INDEX + _TMP_SUFFIX), [index_bytes])
        renames.append(INDEX)
    else:
        deletes.append(INDEX)
        digests[INDEX] = None
    fsync_dir(path)
    atomic_write_bytes(path / JOURNAL, json.dumps({"rename": renames, "delete": deletes}).encode())
    _recover(path)
    return {name: digests[name] for name in CACHE_FILES}


def _write_pickle(file: Path, embeddings: np.ndarray, pickle_extra: dict[str, Any]) -> str:
    with open(file, "wb") as raw:
        writer = _HashingWriter(raw)
        # Protocol 5 writes the array's buffer in-band without an intermediate copy.
        pickle.dump({"embeddings": embeddings, **pickle_extra}, writer, protocol=5)
        raw.flush()
        os.fsync(raw.fileno())
    return writer.hasher.hexdigest()


def _write_synced(file: Path, pieces: Sequence[bytes | memoryview]) -> str:
    """Write `pieces` in order, fsync, and return the blake3 of all of them."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(file, "wb") as out:
        for piece in pieces:
            hasher.update(piece)
            out.write(piece)
        out.flush()
        os.fsync(out.fileno())
    return hasher.hexdigest()


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on the cache directory while it is read, recovered or written.

    `egds status` does not take the repository's lock; without this one, its recovery step ran
    while a checkout was writing, deleted the checkout's temp files as "left by a crash", and the
    checkout then committed a journal whose files were gone: the old cache stayed under a stamp of
    the new version. It also keeps readers from seeing the files mid-rename. (Released by the
    kernel when the process dies; a directory that does not exist needs no lock.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def recover_interrupted_write(path: Path) -> None:
    """Finish a cache write whose journal was committed, and drop temp files of one that was not."""
    with _cache_lock(path):
        _recover(path)


def _recover(path: Path) -> None:
    """`recover_interrupted_write` for a caller that holds the cache lock."""
    journal = path / JOURNAL
    if journal.is_file():
        try:
            plan = json.loads(journal.read_bytes())
            renames, deletes = list(plan["rename"]), list(plan["delete"])
        except (ValueError, KeyError, TypeError):
            raise CacheError(f"{journal} is damaged; delete it and check out again") from None
        for name in renames:
            if name not in CACHE_FILES:
                raise CacheError(f"{journal} names {name!r}, not a cache file; delete it and check out again")
            tmp = path / (name + _TMP_SUFFIX)
            if tmp.exists():
                os.replace(tmp, path / name)
        for name in deletes:
            if name in CACHE_FILES:
                (path / name).unlink(missing_ok=True)
        fsync_dir(path)
        journal.unlink()
        fsync_dir(path)
    elif path.is_dir():
        for name in CACHE_FILES:
            (path / (name + _TMP_SUFFIX)).unlink(missing_ok=True)
    if path.is_dir():
        # atomic_write_bytes' temp file of a journal whose process died before the rename.
        for stale in path.glob(f".{JOURNAL}.*.tmp"):
            stale.unlink(missing_ok=True)
