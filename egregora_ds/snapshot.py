"""`egds snapshot`: cache -> content-hashed partitions -> objects -> manifest -> ref (in that order)."""

from __future__ import annotations

import shlex
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

import pyarrow as pa

from . import __version__
from .cache import CacheContents, encode_json, file_digests, read_cache
from .errors import CacheError, EmptyCache, ModelChanged, UsageError
from .ids import JSON, PARQUET, hash_bytes
from .lineage import LATEST, NEWER, OLDER, OTHER, CacheContent, content_base, newer_error, revert_error, stamped_base, undone
from .model import FORMAT_VERSION, Manifest, PartitionEntry, encode_manifest
from .parquet_io import encode_partition
from .progress import NO_PROGRESS, Progress
from .repo import check_text
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
    # stdlib json: it keeps NaN/Infinity and arbitrarily large ints exactly as json.load read them
    # (and escapes a lone surrogate, which UTF-8 cannot carry, instead of failing).
    return encode_json(document)


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
    revert: bool = False,
    allow_empty: bool = False,
) -> SnapshotResult:
    """Record the cache as a new version. Refuses, before writing anything: a cache that would undo later
    versions (lineage.py, unless `revert`), one based on a version main has not reached, an empty cache
    (unless `allow_empty`), a partial checkout, and a model or dimension change not asked for."""
    cache_path = repo.cache_path
    explicit_model = model is not None
    check_text(message, "the snapshot message", single_line=False)
    if model is not None:
        if not model.strip():
            raise UsageError("--model must not be empty; leave it out to use the repository's model (`egds config model`)")
        check_text(model, "--model", single_line=True)
    model = model or repo.config.model
    with repo.store.locked():
        head = repo.head()
        from .clone import refuse_snapshot_during_pull

        refuse_snapshot_during_pull(repo, cache_path)  # an interrupted pull's cache is not main's version
        parent = repo.manifest(head) if head else None
        require_cache_directory(repo, cache_path)
        digests = file_digests(cache_path)
        # Fast no-op: the cache files hash exactly as they did when they were recorded as `head`.
        stamp = repo.cache_stamp(cache_path)
        if parent is not None and stamp is not None and stamp[0] == head and parent.model == model:
            if digests == stamp[1]:
                return _unchanged(head, parent, message)
        base = stamped_base(repo, cache_path, digests) if parent is not None else None
        if base is not None and base.relation == NEWER:
            raise newer_error(repo, base, cache_path)
        if base is not None and base.exact and base.relation != LATEST and not revert:
            # Still exactly an older version: refuse without reading the cache.
            lost = undone(base.manifest, parent, CacheContent.of_manifest(base.manifest))  # type: ignore[arg-type]
            if lost:
                raise revert_error(base, parent, lost, cache_path)  # type: ignore[arg-type]

        contents = read_cache(cache_path)
        layout = lay_out_cache(contents, repo.config.partitioning, allow_nonfinite)
        if layout.rows == 0 and parent is not None and parent.rows > 0 and not allow_empty:
            raise empty_cache_error(cache_path, parent)
        _refuse_partial_cache(repo, cache_path, layout.keys)
        if parent is not None:
            _check_model(parent, model, layout.dim, new_model, explicit_model)
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
        warnings: list[str] = []
        if parent is not None and parent.model == model and Fingerprint.of_manifest(parent) == fingerprint:
            _stamp(repo, cache_path, head, contents.digests, warnings)  # type: ignore[arg-type]
            return _unchanged(head, parent, message, warnings)  # type: ignore[arg-type]
        if parent is not None and not revert:
            if base is None:  # no stamp says what the cache was written as: its content decides
                base = content_base(repo, repo.history(), lambda m: Fingerprint.of_manifest(m) == fingerprint)
            if base is not None and base.relation in (OLDER, OTHER):
                mine = CacheContent({b.key: b.content_hash for b in built}, layout.row_order, extras_id, index_id)
                lost = undone(base.manifest, parent, mine)
                if lost or not base.exact:
                    raise revert_error(base, parent, lost, cache_path)
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
        # The version is recorded. What follows only keeps later commands right and fast: a failure
        # here is reported as a warning, never as "nothing was recorded".
        if model != repo.config.model:
            _follow_model(repo, manifest, warnings)
        _stamp(repo, cache_path, manifest_id, contents.digests, warnings)
    return SnapshotResult(
        version=manifest.version,
        id=manifest_id,
        created=True,
        rows=layout.rows,
        partitions=PartitionCounts(written=written, reused=len(entries) - written),
        bytes_written=bytes_written,
        message=message,
        warnings=warnings,
    )


def require_cache_directory(repo: Repository, cache_path: Path) -> None:
    if not cache_path.is_dir():
        raise CacheError(
            f"cache directory {cache_path} does not exist; run the pipeline to create it, or point egds at the "
            f"pipeline's cache: `egds config cache PATH` (now {repo.config.cache!r})"
        )


def empty_cache_error(cache_path: Path, parent: Manifest) -> EmptyCache:
    """Why a cache emptied since the latest version is not recorded without `--allow-empty`."""
    return EmptyCache(
        f"the cache at {cache_path} holds no chunks, but v{parent.version} has {parent.rows} rows: recording it would "
        f"make the latest version empty. If the pipeline emptied it on purpose, run `egds snapshot --allow-empty`; "
        f"to restore v{parent.version}, run `egds checkout latest --force`"
    )


def _follow_model(repo: Repository, manifest: Manifest, warnings: list[str]) -> None:
    """A version recorded with another model makes it the repository's default, so the next plain
    snapshot records the same name (not the old one with the new dimension)."""
    try:
        repo.update_config(model=manifest.model)
    except OSError as exc:
        warnings.append(
            f"recorded v{manifest.version} with model {manifest.model!r}, but could not make it the default in "
            f"config.json ({exc.strerror or type(exc).__name__}); run `egds config model {shlex.quote(manifest.model)}` before the next snapshot"
        )


def _stamp(repo: Repository, cache: Path, manifest_id: str, digests: dict[str, str | None], warnings: list[str]) -> None:
    """The stamp only saves later commands from re-reading the cache: losing it loses nothing."""
    try:
        repo.set_cache_stamp(cache, manifest_id, digests)
    except OSError as exc:
        what = exc.strerror or type(exc).__name__
        warnings.append(
            f"could not write the cache stamp {repo.store.root / 'state.json'} ({what}); nothing is lost: the next "
            "status or snapshot re-reads the cache instead (slower) until a snapshot or checkout writes it"
        )


def _unchanged(head: str, parent: Manifest, message: str, warnings: list[str] | None = None) -> SnapshotResult:
    return SnapshotResult(
        version=parent.version,
        id=head,
        created=False,
        rows=parent.rows,
        partitions=PartitionCounts(written=0, reused=len(parent.partitions)),
        bytes_written=0,
        message=message,
        warnings=warnings or [],
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


def _check_model(parent: Manifest, model: str, dim: int, new_model: bool, explicit_model: bool) -> None:
    """A dimension or model name different from the parent's is recorded only when asked for, and a new
    dimension never under the parent's model name unless that name is given explicitly."""
    if dim != parent.dim:
        if not new_model:
            raise ModelChanged(
                f"embeddings have dimension {dim} but v{parent.version} has {parent.dim} (model {parent.model!r}); "
                "if the embedding model changed, run `egds snapshot --new-model --model NAME` with the new model's name"
            )
        if not explicit_model and model == parent.model:
            raise ModelChanged(
                f"the dimension changes from {parent.dim} to {dim} but the model name would stay {model!r}; name the "
                f"model of these embeddings: `egds snapshot --new-model --model NAME` (`--model {shlex.quote(model)}` if it is the "
                "same model at a new dimension)"
            )
    elif model != parent.model and not new_model:
        if explicit_model:
            raise ModelChanged(
                f"model {model!r} differs from v{parent.version}'s {parent.model!r}; to record the change run "
                f"`egds snapshot --new-model --model {shlex.quote(model)}`"
            )
        raise ModelChanged(
            f"the repository's model {model!r} (config.json) differs from v{parent.version}'s {parent.model!r}: if "
            f"the embedding model changed, run `egds snapshot --new-model`; if not, run `egds config model "
            f"{shlex.quote(parent.model)}`"
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
