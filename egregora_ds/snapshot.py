"""`egds snapshot`: cache -> content-hashed partitions -> objects -> manifest -> ref (in that order)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import __version__
from .cache import CacheContents, file_digests, read_cache
from .errors import ModelChanged, UsageError
from .ids import JSON, PARQUET, hash_bytes
from .model import FORMAT_VERSION, Manifest, PartitionEntry, encode_manifest
from .parquet_io import write_partition
from .progress import Progress
from .results import PartitionCounts, SnapshotResult
from .table import PartitionedCache, PartitionTable, partition_cache

if TYPE_CHECKING:
    from .repo import Repository

WRITER_THREADS = 2  # pyarrow releases the GIL while encoding: two files in parallel ~halve the time


def encode_extras(contents: CacheContents) -> bytes | None:
    """The extras object (SPEC.md, "Extras object"), or None when the cache has no extras."""
    if not contents.metadata_extra and not contents.pickle_extra:
        return None
    document = {"metadata": contents.metadata_extra, "pickle": contents.pickle_extra}
    # stdlib json: it keeps NaN/Infinity and arbitrarily large ints exactly as json.load read them.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class Fingerprint:
    """What makes two versions' caches identical: content, order, extras, index, array type."""

    @staticmethod
    def of_manifest(m: Manifest) -> tuple[Any, ...]:
        return (m.dtype, m.dim, tuple((p.key, p.content_hash) for p in m.partitions), m.row_order, m.extras, m.index)

    @staticmethod
    def of_cache(cache: PartitionedCache, extras_id: str | None, index_id: str | None) -> tuple[Any, ...]:
        parts = tuple((p.key, p.content_hash) for p in cache.partitions)
        return (cache.dtype, cache.dim, parts, cache.row_order, extras_id, index_id)


def analyse_cache(contents: CacheContents, partitioning: str, allow_nonfinite: bool) -> tuple[PartitionedCache, bytes | None]:
    return partition_cache(contents, partitioning, allow_nonfinite), encode_extras(contents)


def snapshot(
    repo: Repository,
    message: str,
    *,
    allow_nonfinite: bool,
    new_model: bool,
    model: str | None,
    progress: Progress,
) -> SnapshotResult:
    cache_path = repo.cache_path
    model = model or repo.config.model
    with repo.store.locked():
        head = repo.head()
        parent = repo.manifest(head) if head else None
        # Fast no-op: the cache files hash exactly as they did when they were recorded as `head`.
        stamp = repo.cache_stamp(cache_path)
        if parent is not None and stamp is not None and stamp[0] == head and parent.model == model:
            if file_digests(cache_path) == stamp[1]:
                return _unchanged(head, parent, message)

        contents = read_cache(cache_path)
        cache, extras_bytes = analyse_cache(contents, repo.config.partitioning, allow_nonfinite)
        _refuse_partial_cache(repo, cache_path, cache)
        extras_id = hash_bytes(extras_bytes) if extras_bytes is not None else None
        index_id = hash_bytes(contents.index_bytes) if contents.index_bytes is not None else None
        if parent is not None:
            _check_model(parent, model, cache, new_model)
            if parent.model == model and Fingerprint.of_manifest(parent) == Fingerprint.of_cache(cache, extras_id, index_id):
                repo.set_cache_stamp(cache_path, head, contents.digests)  # type: ignore[arg-type]
                return _unchanged(head, parent, message)  # type: ignore[arg-type]

        known = _known_partitions(repo)
        entries, written, bytes_written = _write_partitions(repo, cache.partitions, known, progress)
        if extras_bytes is not None:
            repo.store.put_object_bytes(extras_bytes, JSON)
        if contents.index_bytes is not None:
            repo.store.put_object_bytes(contents.index_bytes, JSON)
        manifest = Manifest(
            format=FORMAT_VERSION,
            version=parent.version + 1 if parent else 1,
            parent=head,
            created_at=datetime.now(timezone.utc),
            message=message,
            model=model,
            dim=cache.dim,
            dtype=cache.dtype,
            partitioning=repo.config.partitioning,  # type: ignore[arg-type]
            rows=cache.rows,
            partitions=tuple(entries),
            row_order=cache.row_order,
            extras=extras_id,
            index=index_id,
            writer=f"egds {__version__}; pyarrow {pa.__version__}",
        )
        # Objects are durable before the manifest names them, and the manifest before the ref.
        manifest_id = repo.store.put_manifest(encode_manifest(manifest))
        repo.store.write_ref("main", manifest_id)
        repo.set_cache_stamp(cache_path, manifest_id, contents.digests)
    return SnapshotResult(
        version=manifest.version,
        id=manifest_id,
        created=True,
        rows=cache.rows,
        partitions=PartitionCounts(written=written, reused=len(entries) - written),
        bytes_written=bytes_written,
        message=message,
    )


def _unchanged(head: str, parent: Manifest, message: str) -> SnapshotResult:
    return SnapshotResult(
        version=parent.version,
        id=head,
        created=False,
        rows=parent.rows,
        partitions=PartitionCounts(written=0, reused=len(parent.partitions)),
        bytes_written=0,
        message=message,
    )


def _refuse_partial_cache(repo: Repository, cache_path: Path, cache: PartitionedCache) -> None:
    """A partial checkout lacks partitions on purpose; recording it would delete them from history's tip."""
    partial = repo.partial_stamp(cache_path)
    if partial is None:
        return
    base = repo.manifest(partial[0])
    left_out = {p.key for p in base.partitions} - set(partial[1])
    missing = sorted(left_out - {p.key for p in cache.partitions})
    if missing:
        shown = ", ".join(missing[:6]) + (" …" if len(missing) > 6 else "")
        raise UsageError(
            f"the cache is a partial checkout of v{base.version} without partitions {shown}; a snapshot would record "
            f"them as deleted. Run `egds checkout v{base.version} --force` for the full cache first"
        )


def _check_model(parent: Manifest, model: str, cache: PartitionedCache, new_model: bool) -> None:
    if new_model:
        return
    if cache.dim != parent.dim:
        raise ModelChanged(
            f"embeddings have dimension {cache.dim} but version {parent.version} has {parent.dim}; "
            "if the embedding model changed, snapshot with --new-model (and --model NAME)"
        )
    if model != parent.model:
        raise ModelChanged(
            f"model {model!r} differs from version {parent.version}'s {parent.model!r}; pass --new-model to record the change"
        )


def _known_partitions(repo: Repository) -> dict[str, PartitionEntry]:
    """Content hash -> an entry already stored, from every version in the history."""
    known: dict[str, PartitionEntry] = {}
    for _, manifest in reversed(repo.history()):
        for entry in manifest.partitions:
            if repo.store.has_object(entry.object, PARQUET):
                known[entry.content_hash] = entry
    return known


def _write_partitions(
    repo: Repository, partitions: list[PartitionTable], known: dict[str, PartitionEntry], progress: Progress
) -> tuple[list[PartitionEntry], int, int]:
    """Entries for every partition; only partitions whose content is new get a Parquet object."""
    to_write = [p for p in partitions if p.content_hash not in known]
    progress.begin("writing partitions", sum(p.rows for p in to_write), unit="rows")

    def write(partition: PartitionTable) -> tuple[str, int]:
        temp = repo.store.temp_path(PARQUET)
        try:
            write_partition(partition.table, temp, partition.key, partition.content_hash)
            result = repo.store.commit_object_file(temp, PARQUET)
        finally:
            temp.unlink(missing_ok=True)
        progress.advance(partition.rows)
        return result

    with ThreadPoolExecutor(max_workers=WRITER_THREADS) as pool:
        written = dict(zip((p.content_hash for p in to_write), pool.map(write, to_write)))
    progress.end()
    entries = []
    for p in partitions:
        if p.content_hash in written:
            object_id, size = written[p.content_hash]
        else:
            object_id, size = known[p.content_hash].object, known[p.content_hash].bytes
        entries.append(PartitionEntry(p.key, object_id, p.content_hash, p.rows, size, p.min_chunk_id, p.max_chunk_id))
    return entries, len(to_write), sum(size for _, size in written.values())
