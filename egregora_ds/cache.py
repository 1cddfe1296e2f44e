"""The pickle cache on disk: a safe reader and an atomic, journaled writer.

Layout (the newsletter pipeline's): `embeddings.pkl` (pickle of a dict with key `embeddings` ->
numpy array (N, D)), `metadata.json` (`{"chunks": [...]}`), optional `index.json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
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
from .errors import CacheError
from .model import MAX_DIM, MAX_ROWS
from .safe_pickle import PickledArray, load_data_pickle

EMBEDDINGS = "embeddings.pkl"
METADATA = "metadata.json"
INDEX = "index.json"
CACHE_FILES = (EMBEDDINGS, METADATA, INDEX)
_TMP_SUFFIX = ".egds-tmp"
JOURNAL = ".egds-checkout.json"

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
        if type(key) is not str:
            raise CacheError(
                f"{path / EMBEDDINGS}: key {shown(key)} is a {_type_name(key)}, not a string; egds stores the pickle's "
                "other keys as JSON, so they must be strings: convert it or remove it"
            )
        problem = json_value_problem(value, depth=1)
        if problem is not None:
            raise CacheError(
                f"{path / EMBEDDINGS}: key {shown(key)} {problem}, which egds cannot store losslessly (only JSON values: "
                f"str, int, float, bool, None, lists, dicts with string keys, nested at most {MAX_JSON_DEPTH} deep); "
                "remove it or convert it"
            )
    if not isinstance(metadata, dict) or not isinstance(metadata.get("chunks"), list):
        raise CacheError(f"{path / METADATA} must be a JSON object with a 'chunks' list")
    _check_metadata_depth(metadata, metadata_bytes, path / METADATA)
    index_path = path / INDEX
    index_bytes = index_path.read_bytes() if index_path.is_file() else None
    if index_bytes is not None:
        # It must at least be JSON (it is stored verbatim), and no deeper than any JSON egds reads.
        _check_depth(decode_json(index_bytes, index_path), index_bytes, index_path)
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
        obj = load_data_pickle(buffered, str(file))
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
    # What a manifest may declare (model.manifest_problem): a version no reader would accept is never recorded.
    if embeddings.shape[1] > MAX_DIM or embeddings.shape[0] > MAX_ROWS:
        raise CacheError(
            f"{file}: 'embeddings' has shape {embeddings.shape}; egds stores at most {MAX_ROWS} rows of dimension "
            f"at most {MAX_DIM}: check the array"
        )


#: How deeply arrays and objects may nest in the JSON a cache holds (metadata.json and index.json
#: as a whole, the pickle's dict as if it were a JSON object): far below the recursion limits of
#: the JSON encoders and decoders egds uses (about 1000), far above anything a pipeline writes.
MAX_JSON_DEPTH = 100
_SCALARS = frozenset({str, int, float, bool, type(None)})
#: Python refuses to convert integers of more than 4300 decimal digits to text (and so to JSON);
#: below this many bits no integer comes near that limit.
_SAFE_INT_BITS = 14000


def decode_json(data: bytes, file: Path) -> Any:
    """The JSON value of a cache file: what Python's json.loads gives (SPEC.md §6.1). msgspec is the
    fast path; it refuses a few things json.loads accepts (NaN/Infinity, 1e400, a BOM, UTF-16).
    Every failure is one CacheError."""
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # msgspec raises UnicodeDecodeError for invalid UTF-8
        pass  # stdlib json also accepts NaN/Infinity and huge exponents, as json.dump writes them
    try:
        return json.loads(data)
    except RecursionError:
        raise CacheError(
            f"{file} nests arrays/objects too deeply (more than {MAX_JSON_DEPTH} levels deep), more than egds reads; "
            "flatten it"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{file} is not valid JSON ({exc}); fix it or re-create it with the pipeline") from None
    except ValueError:  # Python refuses to convert an integer of more than 4300 digits
        raise CacheError(
            f"{file} holds an integer longer than 4300 digits, which Python cannot read and egds cannot store; "
            "shorten or remove it"
        ) from None


def json_value_problem(value: Any, depth: int = 0) -> str | None:
    """Why `value` is not a plain JSON value egds stores and restores exactly, or None.

    `depth` is how many arrays/objects already enclose `value`; with it, the value may nest up
    to MAX_JSON_DEPTH. Iterative: a deeply nested value is reported, never a RecursionError."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if level >= MAX_JSON_DEPTH:
                return f"nests arrays/objects more than {MAX_JSON_DEPTH} levels deep"
            if kind is dict:
                if not all(type(k) is str for k in item):
                    bad = next(k for k in item if type(k) is not str)
                    return f"holds a dict with key {shown(bad)}, which is not a string"
                stack.extend((v, level + 1) for v in item.values())
            else:
                stack.extend((v, level + 1) for v in item)
        elif kind is int:
            if item.bit_length() > _SAFE_INT_BITS:
                try:
                    int.__repr__(item)
                except ValueError:
                    return "holds an integer of more than 4300 digits (Python cannot write it as JSON)"
        elif kind not in _SCALARS:
            return f"holds a {_type_name(item)}"
    return None


def _check_depth(document: Any, data: bytes, file: Path) -> None:
    # A document with fewer opening brackets than the limit cannot nest deeper (brackets inside
    # strings only make the count larger): the usual case costs two C-speed counts.
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return
    problem = json_value_problem(document)
    if problem is not None:
        raise CacheError(f"{file} {problem}, more than egds reads; flatten it")


def _check_metadata_depth(metadata: dict[str, Any], data: bytes, file: Path) -> None:
    """`_check_depth` for metadata.json without a Python walk over every chunk: only chunks with
    an array or object among their values (rare) are walked."""
    chunks = metadata["chunks"]
    for key, value in metadata.items():
        if key != "chunks":
            problem = json_value_problem(value, depth=1)
            if problem is not None:
                raise CacheError(f"{file}: top-level key {shown(key)} {problem}, more than egds reads; flatten it")
    # Every container is opened by a bracket outside strings: if there are no more brackets than
    # the document object, the chunk list and one per chunk, no chunk holds an array or object
    # (a chunk that is not an object is refused later, when the cache is laid out).
    if data.count(b"[") + data.count(b"{") <= len(chunks) + 2 or not set(map(type, chunks)) <= {dict}:
        return
    kinds = set(map(type, itertools.chain.from_iterable(map(dict.values, chunks))))
    if kinds <= _SCALARS:
        return
    for row, chunk in enumerate(chunks):
        if not _SCALARS.issuperset(map(type, chunk.values())):
            problem = json_value_problem(chunk, depth=2)
            if problem is not None:
                raise CacheError(f"{file}: chunks[{row}] {problem}, more than egds reads; flatten it")


def shown(value: Any, limit: int = 60) -> str:
    """A value's repr for a one-line message, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(value: Any) -> str:
    return "numpy array" if type(value) is PickledArray else type(value).__name__


def stdlib_json(value: Any) -> bytes:
    """`json.dumps(value, ensure_ascii=False, separators=(",", ":"))` as UTF-8, or, when the text
    holds a lone surrogate (U+D800-U+DFFF, which UTF-8 cannot carry; JSON's `\\ud800` escape can
    produce one), the same with `ensure_ascii=True`, which escapes it: it parses back to the same
    value (SPEC.md §6)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def encode_json(value: Any) -> bytes:
    """Compact JSON exactly as Python's json.dumps writes it (SPEC.md §6.2): NaN/Infinity tokens,
    integers of any size, floats as repr(); the one dialect for everything egds writes compactly."""
    return stdlib_json(value)


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
    try:
        digests = _write_temp_files(path, embeddings, pickle_extra, metadata, index_bytes)
        fsync_dir(path)
        renames = [name for name in CACHE_FILES if digests[name] is not None]
        deletes = [name for name in CACHE_FILES if digests[name] is None]
        with _naming(path / JOURNAL):
            atomic_write_bytes(path / JOURNAL, json.dumps({"rename": renames, "delete": deletes}).encode())
    except BaseException:
        # A failure before the journal is committed (a full disk, most often) must not leave the
        # new files holding the space: the old cache stays as it was, and nothing else is ours.
        if not (path / JOURNAL).exists():
            for name in CACHE_FILES:
                (path / (name + _TMP_SUFFIX)).unlink(missing_ok=True)
        raise
    _recover(path)
    return {name: digests[name] for name in CACHE_FILES}


def _write_temp_files(
    path: Path,
    embeddings: np.ndarray,
    pickle_extra: dict[str, Any],
    metadata: bytes | Sequence[memoryview],
    index_bytes: bytes | None,
) -> dict[str, str | None]:
    """Each new cache file under its temp name, fsynced; their blake3 (None: the file goes away)."""
    digests: dict[str, str | None] = {}
    # The two big files are written side by side: writes, blake3 and fsync all release the GIL.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pickle_digest = writer.submit(_write_pickle, path / EMBEDDINGS, embeddings, pickle_extra)
        try:
            pieces = [metadata] if isinstance(metadata, bytes) else metadata
            digests[METADATA] = _write_synced(path / METADATA, pieces)
        finally:
            digests[EMBEDDINGS] = pickle_digest.result()
    digests[INDEX] = None if index_bytes is None else _write_synced(path / INDEX, [index_bytes])
    return digests


@contextlib.contextmanager
def _naming(file: Path) -> Iterator[None]:
    """Give an OSError raised while writing `file` the file's name: os.write and fsync raise
    theirs without one, and "No space left on device" alone does not say where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(file)) from exc


def _write_pickle(file: Path, embeddings: np.ndarray, pickle_extra: dict[str, Any]) -> str:
    """Pickle the cache's dict to `file`'s temp name, fsynced; the blake3 of the bytes written."""
    with _naming(file), open(file.with_name(file.name + _TMP_SUFFIX), "wb") as raw:
        writer = _HashingWriter(raw)
        # Protocol 5 writes the array's buffer in-band without an intermediate copy.
        pickle.dump({"embeddings": embeddings, **pickle_extra}, writer, protocol=5)
        raw.flush()
        os.fsync(raw.fileno())
    return writer.hasher.hexdigest()


def _write_synced(file: Path, pieces: Sequence[bytes | memoryview]) -> str:
    """Write `pieces` in order to `file`'s temp name, fsync, and return the blake3 of all of them."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with _naming(file), open(file.with_name(file.name + _TMP_SUFFIX), "wb") as out:
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
