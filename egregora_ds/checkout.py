"""`egds checkout`: manifest -> verified objects -> the exact pickle cache, written atomically."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa

from .cache import file_digests, json_value_problem, read_cache, write_cache
from .errors import CacheError, CorruptObject, EgdsError, UnsavedWork, UsageError
from .ids import JSON, PARQUET, hash_bytes, short
from .metadata_json import chunk_objects, metadata_pieces
from .model import Manifest, OrderRun, PartitionEntry
from .parquet_io import check_stored_footer, read_partition
from .progress import Progress
from .rebuild import destination_ranges, scatter_vectors
from .results import CheckoutResult
from .table import EMBEDDING, content_hash

if TYPE_CHECKING:
    from .repo import Repository

READER_THREADS = 2


def checkout(
    repo: Repository, rev: str, cache: Path, *, force: bool, partitions: list[str] | None = None, progress: Progress
) -> CheckoutResult:
    manifest_id, manifest = repo.resolve(rev)
    selected = select_partitions(manifest, partitions)
    with repo.store.locked():
        digests = file_digests(cache)
        stamp = repo.cache_stamp(cache)
        if partitions is None and digests is not None and stamp is not None and stamp[1] == digests and stamp[0] == manifest_id:
            return _result(manifest_id, manifest, selected, cache, 0, already_current=True)
        if digests is not None and not force:
            _refuse_unsaved_work(repo, cache, digests, stamp)
        from .transfer import fetch_for_checkout, manifest_object_keys, object_size_bounds

        # A partial clone (or a gc'd repository with a remote) fetches what this version needs.
        fetch_for_checkout(
            repo, manifest_object_keys(manifest, None if partitions is None else set(selected)), progress,
            object_size_bounds([manifest]),
        )
        entries = [p for p in manifest.partitions if p.key in set(selected)]
        row_order = _row_order_of(manifest, entries)
        embeddings, chunk_texts, bytes_read = read_version(repo, manifest, entries, row_order, progress)
        extras = load_extras(repo, manifest)
        metadata = metadata_pieces(chunk_texts, row_order, extras.get("metadata", {}))
        index_bytes = load_index(repo, manifest)
        new_digests = write_cache(cache, embeddings, extras.get("pickle", {}), metadata, index_bytes)
        repo.set_cache_stamp(cache, manifest_id, new_digests, None if partitions is None else selected)
    return _result(manifest_id, manifest, selected, cache, bytes_read)


def select_partitions(manifest: Manifest, partitions: list[str] | None) -> list[str]:
    keys = [p.key for p in manifest.partitions]
    if partitions is None:
        return keys
    unknown = sorted(set(partitions) - set(keys))
    if unknown:
        raise UsageError(
            f"version {manifest.version} has no partition {', '.join(unknown)}; it has {', '.join(keys) or 'none'}"
        )
    return [k for k in keys if k in set(partitions)]


def _row_order_of(manifest: Manifest, entries: list[PartitionEntry]) -> tuple[OrderRun, ...]:
    """The manifest's row order restricted to some partitions, re-indexed into `entries`."""
    if len(entries) == len(manifest.partitions):
        return manifest.row_order
    index = {p.key: i for i, p in enumerate(entries)}
    runs = []
    for run in manifest.row_order:
        key = manifest.partitions[run.partition].key
        if key in index:
            runs.append(OrderRun(index[key], run.rows))
    return tuple(runs)


def _result(
    manifest_id: str, manifest: Manifest, selected: list[str], cache: Path, bytes_read: int, already_current: bool = False
) -> CheckoutResult:
    chosen = set(selected)
    return CheckoutResult(
        version=manifest.version,
        id=manifest_id,
        cache=str(cache),
        rows=sum(p.rows for p in manifest.partitions if p.key in chosen),
        partitions=len(selected),
        partial=len(selected) != len(manifest.partitions),
        bytes_read=bytes_read,
        already_current=already_current,
    )


def read_version(
    repo: Repository, manifest: Manifest, entries: list[PartitionEntry], row_order: Sequence[OrderRun], progress: Progress
) -> tuple[np.ndarray, list[pa.Array], int]:
    """The array and each partition's chunk objects (JSON text) of `entries`, every object re-hashed
    and its content re-derived. Reader threads do it all (blake3, Parquet, Arrow kernels and the
    array copy release the GIL); a partition's table is freed as soon as it is turned into both."""
    rows = sum(p.rows for p in entries)
    for entry in entries:  # before the array the manifest declares is allocated
        check_stored_footer(repo.store.object_path(entry.object, PARQUET), entry, manifest)
    stored = np.dtype(manifest.dtype).newbyteorder("<")
    try:
        embeddings = np.empty((rows, manifest.dim), dtype=stored)
    except MemoryError:
        size = rows * manifest.dim * stored.itemsize
        raise EgdsError(
            f"version {manifest.version} has {rows} rows of dimension {manifest.dim} ({size / 2**30:.1f} GiB as "
            f"{manifest.dtype}), more than this machine can allocate; check out some partitions with --partitions, "
            "or use a machine with more memory"
        ) from None
    destinations = destination_ranges(row_order, len(entries))
    progress.begin("reading partitions", sum(p.bytes for p in entries), unit="bytes")

    def read(entry: PartitionEntry, ranges: list[tuple[int, int]]) -> pa.Array:
        where = f"partition {entry.key} of version {manifest.version}"
        data = repo.store.read_object(entry.object, PARQUET, where)
        table = read_partition(data, entry, manifest)
        if content_hash(table) != entry.content_hash:
            raise CorruptObject(
                f"object {short(entry.object)}.parquet ({where}) decodes to content that differs from the manifest; "
                "nothing was written"
            )
        scatter_vectors(table.column(EMBEDDING), manifest.dim, ranges, embeddings)
        objects = chunk_objects(table.drop_columns([EMBEDDING]), f"object {short(entry.object)}.parquet ({where})")
        progress.advance(entry.bytes)
        return objects

    with ThreadPoolExecutor(max_workers=READER_THREADS) as pool:
        chunk_texts = list(pool.map(read, entries, destinations))
    progress.end()
    if np.dtype(manifest.dtype) != stored:
        embeddings = embeddings.astype(np.dtype(manifest.dtype))
    return embeddings, chunk_texts, sum(p.bytes for p in entries)


def load_extras(repo: Repository, manifest: Manifest) -> dict[str, Any]:
    """The version's extras object, validated (`decode_extras`); {} when it has none."""
    if manifest.extras is None:
        return {}
    where = f"extras object {short(manifest.extras)}.json of version {manifest.version}"
    return decode_extras(repo.store.read_object(manifest.extras, JSON, f"extras of version {manifest.version}"), where)


def decode_extras(data: bytes, where: str) -> dict[str, Any]:
    """An extras object (SPEC.md §6) as checkout may use it, or CorruptObject naming `where`.

    Its two objects are spliced into metadata.json and the pickle's dict next to the cache's own
    keys, so they must never hold those keys: an extra `chunks` would follow the real list in
    metadata.json (and JSON readers keep the last), an extra `embeddings` would replace the array.
    Values must be what a snapshot can have written: JSON with string keys, nested no deeper
    than a cache's JSON may be."""
    try:
        document = json.loads(data)
    except (RecursionError, ValueError) as exc:
        raise _bad_extras(where, f"is not JSON egds reads ({type(exc).__name__})") from None
    if type(document) is not dict or set(document) != {"metadata", "pickle"}:
        raise _bad_extras(where, 'is not an object with exactly the keys "metadata" and "pickle"')
    for part, own_key in (("metadata", "chunks"), ("pickle", "embeddings")):
        extras = document[part]
        if type(extras) is not dict:
            raise _bad_extras(where, f'has a "{part}" that is not a JSON object')
        if own_key in extras:
            raise _bad_extras(where, f'has a "{part}" key "{own_key}", which would shadow the cache\'s own')
        # Each part stands for a top-level object (metadata.json's, the pickle's dict): it may nest
        # exactly as deep as that object could.
        problem = json_value_problem(extras, depth=0)
        if problem is not None:
            raise _bad_extras(where, f'has a "{part}" object that {problem}')
    return document


def _bad_extras(where: str, problem: str) -> CorruptObject:
    return CorruptObject(
        f"{where} {problem}, so no snapshot wrote it; nothing was written. Restore the object from a remote or "
        "another copy, or check out another version"
    )


def load_index(repo: Repository, manifest: Manifest) -> bytes | None:
    """The version's index.json bytes, or None; they must parse as JSON, as a snapshot checked."""
    if manifest.index is None:
        return None
    data = repo.store.read_object(manifest.index, JSON, "index.json")
    where = f"index object {short(manifest.index)}.json of version {manifest.version}"
    try:
        problem = json_value_problem(json.loads(data))
    except (RecursionError, ValueError) as exc:
        problem = f"is not JSON egds reads ({type(exc).__name__})"
    if problem is not None:
        raise CorruptObject(
            f"{where} {problem}, so no snapshot stored it; nothing was written. Restore the object "
            "from a remote or another copy, or check out another version"
        )
    return data


def cache_matches_version(repo: Repository, cache: Path) -> str | None:
    """The id of a recorded version whose content equals the cache's, or None (slow: parses the cache)."""
    from .snapshot import Fingerprint, analyse_cache

    contents = read_cache(cache)
    partitioned, extras = analyse_cache(contents, repo.config.partitioning, allow_nonfinite=True)
    mine = Fingerprint.of_cache(
        partitioned,
        partitioned.partitions,
        hash_bytes(extras) if extras is not None else None,
        hash_bytes(contents.index_bytes) if contents.index_bytes is not None else None,
    )
    for manifest_id in repo.store.manifest_ids():
        if Fingerprint.of_manifest(repo.manifest(manifest_id)) == mine:
            return manifest_id
    return None


def ensure_cache_is_saved(repo: Repository, cache: Path) -> None:
    """Raise UnsavedWork if the cache holds content no version records (an absent cache is fine)."""
    digests = file_digests(cache)
    if digests is not None:
        _refuse_unsaved_work(repo, cache, digests, repo.cache_stamp(cache))


def _refuse_unsaved_work(
    repo: Repository, cache: Path, digests: dict[str, str | None], stamp: tuple[str, dict[str, str | None]] | None
) -> None:
    if stamp is not None and stamp[1] == digests:
        return  # the cache is exactly a version we wrote or recorded
    partial = repo.partial_stamp(cache)
    if partial is not None and partial[2] == digests:
        return  # exactly the partial cache we wrote
    try:
        if cache_matches_version(repo, cache) is not None:
            return
        reason = "holds changes that no version records"
    except CacheError as exc:
        reason = f"cannot be read ({exc})"
    raise UnsavedWork(
        f"the cache at {cache} {reason}; run `egds snapshot` to save it first, or pass --force to overwrite it"
    )
