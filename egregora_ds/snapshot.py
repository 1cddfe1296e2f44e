"""`egds snapshot`: cache -> content-hashed partitions -> objects -> manifest -> ref (in that order)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

import pyarrow as pa

from . import __version__
from .cache import CacheContents, file_digests, read_cache
from .errors import ModelChanged, UsageError
from .ids import JSON, PARQUET, hash_bytes
from .model import FORMAT_VERSION, Manifest, PartitionEntry, encode_manifest
from .parquet_io import encode_partition
from .progress import NO_PROGRESS, Progress
from .results import PartitionCounts, SnapshotResult
from .table import CacheLayout, PartitionedCache, PartitionTable, lay_out_cache, partition_cache

if TYPE_CHECKING:
    from .repo import Repository

# pyarrow encodes without the GIL: one encoder per core. fsync waits are hidden by the I/O threads.
ENCODER_THREADS = 2
IO_THREADS = 4


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
    def of_cache(
        cache: PartitionedCache | CacheLayout,
        partitions: Sequence[PartitionTable | BuiltPartition],
        extras_id: str | None,
        index_id: str | None,
    ) -> tuple[Any, ...]:
        parts = tuple((p.key, p.content_hash) for p in partitions)
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
        from .clone import refuse_snapshot_during_pull

        refuse_snapshot_during_pull(repo, cache_path)  # an interrupted pull's cache is not main's version
        parent = repo.manifest(head) if head else None
        # Fast no-op: the cache files hash exactly as they did when they were recorded as `head`.
        stamp = repo.cache_stamp(cache_path)
        if parent is not None and stamp is not None and stamp[0] == head and parent.model == model:
            if file_digests(cache_path) == stamp[1]:
                return _unchanged(head, parent, message)

        contents = read_cache(cache_path)
        layout = lay_out_cache(contents, repo.config.partitioning, allow_nonfinite)
        _refuse_partial_cache(repo, cache_path, layout.keys)
        if parent is not None:
            _check_model(parent, model, layout.dim, new_model)
        extras_bytes = encode_extras(contents)
        extras_id = hash_bytes(extras_bytes) if extras_bytes is not None else None
        index_id = hash_bytes(contents.index_bytes) if contents.index_bytes is not None else None
        # Partitions are written while later ones are still being built. A partition whose content
        # a version already stores is never written; one the parent has without its object here (a
        # partial clone) is written only once it is clear that something changed.
        unchanged_content = {p.content_hash for p in parent.partitions} if parent is not None else set()
        writer = _PartitionWriter(repo, _known_partitions(repo), unchanged_content, progress)
        built = writer.write_new(layout)
        fingerprint = Fingerprint.of_cache(layout, built, extras_id, index_id)
        if parent is not None and parent.model == model and Fingerprint.of_manifest(parent) == fingerprint:
            repo.set_cache_stamp(cache_path, head, contents.digests)  # type: ignore[arg-type]
            return _unchanged(head, parent, message)  # type: ignore[arg-type]
        writer.write_deferred()
        entries = writer.entries(built)
        written, bytes_written = len(writer.written), sum(size for _, size in writer.written.values())

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
            dim=layout.dim,
            dtype=layout.dtype,
            partitioning=repo.config.partitioning,  # type: ignore[arg-type]
            rows=layout.rows,
            partitions=tuple(entries),
            row_order=layout.row_order,
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
        rows=layout.rows,
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


def _refuse_partial_cache(repo: Repository, cache_path: Path, keys: list[str]) -> None:
    """A partial checkout lacks partitions on purpose; recording it would delete them from history's tip."""
    partial = repo.partial_stamp(cache_path)
    if partial is None:
        return
    base = repo.manifest(partial[0])
    left_out = {p.key for p in base.partitions} - set(partial[1])
    missing = sorted(left_out - set(keys))
    if missing:
        shown = ", ".join(missing[:6]) + (" …" if len(missing) > 6 else "")
        raise UsageError(
            f"the cache is a partial checkout of v{base.version} without partitions {shown}; a snapshot would record "
            f"them as deleted. Run `egds checkout v{base.version} --force` for the full cache first"
        )


def _check_model(parent: Manifest, model: str, dim: int, new_model: bool) -> None:
    if new_model:
        return
    if dim != parent.dim:
        raise ModelChanged(
            f"embeddings have dimension {dim} but version {parent.version} has {parent.dim}; "
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


class BuiltPartition(NamedTuple):
    """What a snapshot keeps of a partition once its table is written (or found already stored)."""

    key: str
    content_hash: str
    rows: int
    min_chunk_id: int
    max_chunk_id: int


class _PartitionWriter:
    """Writes the Parquet objects of a snapshot's new partitions, in parallel with their building.

    The main thread builds partition tables (Python work that holds the GIL); encoder threads hash
    and encode them (blake3 and pyarrow release the GIL); I/O threads write and fsync the bytes, so
    an encoder never sits idle waiting for the disk."""

    def __init__(self, repo: Repository, known: dict[str, PartitionEntry], defer: set[str], progress: Progress) -> None:
        self.repo, self.known, self.defer, self.progress = repo, known, defer, progress
        self.written: dict[str, tuple[str, int]] = {}
        self.deferred: list[PartitionTable] = []
        # Encoded files waiting for a disk thread are bounded, so a slow disk cannot make the
        # whole version's Parquet bytes pile up in memory.
        self._in_flight = threading.BoundedSemaphore(IO_THREADS)
        self._queued = threading.BoundedSemaphore(2 * ENCODER_THREADS)

    def write_new(self, layout: CacheLayout) -> list[BuiltPartition]:
        """Build every partition; write those with new content, keep the deferred ones' tables."""
        self.progress.begin("writing partitions", layout.rows, unit="rows")
        built = self._run(layout.tables(), self.progress)
        self.progress.end()
        return built

    def write_deferred(self) -> None:
        deferred, self.deferred, self.defer = self.deferred, [], set()
        self._run(iter(deferred), NO_PROGRESS)

    def _run(self, partitions: Iterator[PartitionTable], progress: Progress) -> list[BuiltPartition]:
        with ThreadPoolExecutor(ENCODER_THREADS) as encoders, ThreadPoolExecutor(IO_THREADS) as disks:
            try:
                futures = []
                while True:
                    # Build a table only when an encoder will soon take it: at most two per encoder
                    # wait, so the tables of a whole version are never all in memory at once.
                    self._queued.acquire()
                    partition = next(partitions, None)
                    if partition is None:
                        self._queued.release()
                        break
                    futures.append(encoders.submit(self._encode, partition, disks, progress))
                    del partition
                results = [future.result() for future in futures]
                for content, stored in ((built.content_hash, put) for built, put in results if put is not None):
                    self.written[content] = stored.result()
            except BaseException:
                encoders.shutdown(wait=True, cancel_futures=True)
                disks.shutdown(wait=True, cancel_futures=True)
                raise
        return [built for built, _ in results]

    def entries(self, built: list[BuiltPartition]) -> list[PartitionEntry]:
        entries = []
        for p in built:
            if p.content_hash in self.written:
                object_id, size = self.written[p.content_hash]
            else:
                object_id, size = self.known[p.content_hash].object, self.known[p.content_hash].bytes
            entries.append(PartitionEntry(p.key, object_id, p.content_hash, p.rows, size, p.min_chunk_id, p.max_chunk_id))
        return entries

    def _encode(
        self, partition: PartitionTable, disks: ThreadPoolExecutor, progress: Progress
    ) -> tuple[BuiltPartition, Future[tuple[str, int]] | None]:
        try:
            content = partition.content_hash
            built = BuiltPartition(partition.key, content, partition.rows, partition.min_chunk_id, partition.max_chunk_id)
            progress.advance(partition.rows)
            if content in self.known:
                return built, None
            if content in self.defer:
                self.deferred.append(partition)  # list.append is atomic
                return built, None
            data = encode_partition(partition.table, partition.key, content)
            self._in_flight.acquire()
            try:
                return built, disks.submit(self._store, data)
            except BaseException:
                self._in_flight.release()
                raise
        finally:
            self._queued.release()

    def _store(self, data: pa.Buffer) -> tuple[str, int]:
        try:
            return self.repo.store.put_object_bytes(memoryview(data), PARQUET), data.size
        finally:
            self._in_flight.release()
