"""`egds status` (cache vs latest) and `egds diff A B` (version vs version, down to chunks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cache import file_digests, read_cache
from .errors import CacheError
from .ids import PARQUET, hash_bytes
from .lineage import NEWER, OLDER, OTHER, CacheContent, content_base, newer_error, revert_error, stamped_base, undone
from .model import Manifest, PartitionEntry
from .parquet_io import read_partition
from .results import DiffChunks, DiffIds, DiffPartitions, DiffResult, PartitionStatus, StatusResult
from .table import CHUNK_ID, DATE, EMBEDDING, EXTRA, TYPED_FIELDS

if TYPE_CHECKING:
    from .repo import Repository

TEXT = "text"
_MISSING = object()


def compare_partitions(
    old: dict[str, str], new: dict[str, str]
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(unchanged, changed, added, removed) keys between two `key -> content hash` maps (pure)."""
    unchanged = sorted(k for k in new if k in old and old[k] == new[k])
    changed = sorted(k for k in new if k in old and old[k] != new[k])
    added = sorted(k for k in new if k not in old)
    removed = sorted(k for k in old if k not in new)
    return unchanged, changed, added, removed


def _hashes(manifest: Manifest | None) -> dict[str, str]:
    return {p.key: p.content_hash for p in manifest.partitions} if manifest else {}


def status(repo: Repository, cache: Path) -> StatusResult:
    """Compare the cache with the latest version, and say which version it holds or was checked out as
    when that is not the latest, and what a snapshot of it would be refused for (lineage.py)."""
    from .snapshot import Fingerprint, analyse_cache, empty_cache_error, require_cache_directory

    head = repo.head()
    latest = repo.manifest(head) if head else None
    digests = file_digests(cache)
    stamp = repo.cache_stamp(cache)
    base = stamped_base(repo, cache, digests) if latest is not None else None
    partial = sorted(repo.partial_partitions(cache) or []) or None
    if base is not None and base.exact and stamp is not None and stamp[0] == base.id:
        # The files are exactly a whole version we wrote or recorded: compare manifests, read nothing.
        m = base.manifest
        content, rows, dim, dtype = CacheContent.of_manifest(m), m.rows, m.dim, m.dtype
    else:
        if cache == repo.cache_path:
            require_cache_directory(repo, cache)
        elif not cache.is_dir():
            raise CacheError(f"cache directory {cache} does not exist; check the --cache path")
        contents = read_cache(cache)
        partitioned, extras = analyse_cache(contents, repo.config.partitioning, allow_nonfinite=True)
        extras_id = hash_bytes(extras) if extras is not None else None
        index_id = hash_bytes(contents.index_bytes) if contents.index_bytes is not None else None
        content = CacheContent(
            {p.key: p.content_hash for p in partitioned.partitions}, partitioned.row_order, extras_id, index_id
        )
        rows, dim, dtype = partitioned.rows, partitioned.dim, partitioned.dtype
        if latest is not None and base is None:  # no stamp says what the cache was written as: its content decides
            mine = Fingerprint.of_cache(partitioned, partitioned.partitions, extras_id, index_id)
            base = content_base(repo, repo.history(), lambda m: Fingerprint.of_manifest(m) == mine)
    unchanged, changed, added, removed = compare_partitions(_hashes(latest), content.partitions)
    index_changed = latest is not None and latest.index != content.index or latest is None and content.index is not None
    extras_changed = latest is not None and latest.extras != content.extras or latest is None and content.extras is not None
    order_changed = latest is not None and latest.row_order != content.row_order
    model_changed = latest is not None and (latest.dim != dim or latest.dtype != dtype)
    clean = latest is not None and not (changed or added or removed or index_changed or extras_changed or order_changed or model_changed)
    would_undo: list[str] = []
    refusal: Exception | None = None
    working = cache == repo.cache_path  # only the repository's own cache is what `egds snapshot` records
    if base is not None and latest is not None and not clean:
        if base.relation == NEWER:
            refusal = newer_error(repo, base, cache)
        elif base.relation in (OLDER, OTHER):
            would_undo = undone(base.manifest, latest, content)
            if would_undo or not base.exact:
                refusal = revert_error(base, latest, would_undo, cache)
    if refusal is None and rows == 0 and latest is not None and latest.rows > 0:
        refusal = empty_cache_error(cache, latest)
    if not working:
        refusal = None
    holds = base if base is not None and base.exact else None
    based_on = base if base is not None and not base.exact else None
    return StatusResult(
        version=latest.version if latest else None,
        id=head,
        cache=str(cache),
        clean=clean,
        rows=rows,
        partitions=PartitionStatus(unchanged=unchanged, changed=changed, added=added, removed=removed),
        index_changed=index_changed,
        extras_changed=extras_changed,
        order_changed=order_changed,
        model_changed=model_changed,
        partial=partial,
        holds=holds.manifest.version if holds else None,
        holds_id=holds.id if holds else None,
        based_on=based_on.manifest.version if based_on else None,
        based_on_id=based_on.id if based_on else None,
        relation=base.relation if base is not None and latest is not None else None,
        would_undo=would_undo,
        snapshot_refusal=str(refusal) if refusal is not None else None,
    )


def diff(repo: Repository, rev_a: str, rev_b: str, *, with_ids: bool) -> DiffResult:
    """Partitions and chunks that differ from `rev_a` to `rev_b`, down to each chunk's changed fields.

    A chunk is matched by chunk_id across all the touched partitions, so one whose date moved it to
    another partition is changed (its `newsletter_date`, and `moved`), not removed and added."""
    id_a, a = repo.resolve(rev_a)
    id_b, b = repo.resolve(rev_b)
    _, changed, added, removed = compare_partitions(_hashes(a), _hashes(b))
    touched = set(changed) | set(added) | set(removed)
    # Chunks in unchanged partitions are identical in both versions; only the rest need reading.
    old = _chunk_table(repo, a, [p for p in a.partitions if p.key in touched])
    new = _chunk_table(repo, b, [p for p in b.partitions if p.key in touched])
    chunk_diff = _diff_chunks(old, new)
    fields = chunk_diff.fields
    empty: list[int] = []
    return DiffResult(
        a=id_a,
        b=id_b,
        partitions=DiffPartitions(added=added, removed=removed, changed=changed),
        chunks=DiffChunks(
            added=len(chunk_diff.added), removed=len(chunk_diff.removed),
            text_changed=len(fields.get(TEXT, empty)), embedding_changed=len(fields.get(EMBEDDING, empty)),
            changed=len(chunk_diff.changed), moved=len(chunk_diff.moved), fields={k: len(v) for k, v in fields.items()},
        ),
        ids=DiffIds(
            added=chunk_diff.added.tolist(), removed=chunk_diff.removed.tolist(),
            text_changed=fields.get(TEXT, np.empty(0, np.int64)).tolist(),
            embedding_changed=fields.get(EMBEDDING, np.empty(0, np.int64)).tolist(),
            changed=chunk_diff.changed.tolist(), moved=chunk_diff.moved.tolist(),
            fields={k: v.tolist() for k, v in fields.items()},
        ) if with_ids else None,
        index_changed=a.index != b.index,
        extras_changed=a.extras != b.extras,
        order_changed=a.row_order != b.row_order,
        model_changed=(a.model, a.dim, a.dtype) != (b.model, b.dim, b.dtype),
    )


# ---- chunk-level diff --------------------------------------------------------------------------------
# Each side is one table over its touched partitions, with every typed field as a column (null where the
# partition keeps that field in `extra`) and a flag saying which layout the row's partition uses. Rows
# without `extra` on either side are compared column by column with Arrow kernels; only the rows that
# have an `extra` JSON on some side are compared field by field in Python, from their full chunk.

PARTITION = "\0partition"  # internal column names: never a chunk field (those come from JSON keys)
_PRESENT = "\0present:"
_FIELD_ORDER = [DATE, *TYPED_FIELDS]
#: The order `fields` lists changes in: text and vector first, then the other known fields, then the rest.
_REPORT_ORDER = [TEXT, EMBEDDING, DATE, *(name for name in TYPED_FIELDS if name != TEXT)]


class ChunkDiff(NamedTuple):
    added: np.ndarray
    removed: np.ndarray
    changed: np.ndarray
    """Chunks present in both versions with any difference (a field or the vector)."""
    moved: np.ndarray
    """Changed chunks that are in another partition (their date moved them)."""
    fields: dict[str, np.ndarray]
    """Field name -> the ids of the chunks whose field changed (`embedding` for the vector); only
    fields with changes, known fields first, then others (unknown fields from `extra`) by name."""


def _chunk_table(repo: Repository, manifest: Manifest, entries: list[PartitionEntry]) -> pa.Table | None:
    """The given partitions' chunks in one table of uniform schema, verified on read (None: no partitions)."""
    tables = []
    for entry in entries:
        data = repo.store.read_object(entry.object, PARQUET, f"partition {entry.key}")
        table = read_partition(data, entry, manifest)
        n = table.num_rows
        columns: dict[str, pa.Array | pa.ChunkedArray] = {
            CHUNK_ID: table.column(CHUNK_ID).cast(pa.int64()),
            DATE: table.column(DATE).cast(pa.date32()),
            PARTITION: pa.repeat(entry.key, n).cast(pa.large_string()),
        }
        for name, (arrow_type, _) in TYPED_FIELDS.items():
            typed = name in table.column_names
            wide = pa.large_string() if pa.types.is_string(arrow_type) else arrow_type
            columns[name] = table.column(name).cast(wide) if typed else pa.nulls(n, wide)
            columns[_PRESENT + name] = pa.repeat(typed, n)
        columns[EXTRA] = table.column(EXTRA).cast(pa.large_string())
        columns[EMBEDDING] = table.column(EMBEDDING)
        tables.append(pa.table(columns))
    return pa.concat_tables(tables).combine_chunks() if tables else None


def _diff_chunks(old: pa.Table | None, new: pa.Table | None) -> ChunkDiff:
    none = np.empty(0, dtype=np.int64)
    old_ids = old.column(CHUNK_ID).to_numpy() if old is not None else none
    new_ids = new.column(CHUNK_ID).to_numpy() if new is not None else none
    added = np.setdiff1d(new_ids, old_ids)
    removed = np.setdiff1d(old_ids, new_ids)
    common, old_rows, new_rows = np.intersect1d(old_ids, new_ids, assume_unique=True, return_indices=True)
    if len(common) == 0 or old is None or new is None:
        return ChunkDiff(added, removed, none, none, {})
    before, after = old.take(pa.array(old_rows)), new.take(pa.array(new_rows))
    changed_by_field: dict[str, np.ndarray] = {}  # field -> bool mask over `common`
    changed_by_field[DATE] = ~_same(before.column(DATE), after.column(DATE))
    same_layout = np.ones(len(common), dtype=bool)
    for name in TYPED_FIELDS:
        same_place = _same(before.column(_PRESENT + name), after.column(_PRESENT + name))
        changed_by_field[name] = ~(_same(before.column(name), after.column(name)) & same_place)
        same_layout &= same_place
    # A row whose `extra` text and layout are the same on both sides is decided by the columns alone (the
    # usual case); only rows whose `extra` differs, or that moved a field between a column and `extra`,
    # are rebuilt field by field.
    has_extra = _valid(before.column(EXTRA)) | _valid(after.column(EXTRA))
    slow = has_extra & ~(_same(before.column(EXTRA), after.column(EXTRA)) & same_layout)
    rows = np.flatnonzero(slow)
    if len(rows):
        # These rows' fields are decided from their full chunks (typed columns plus `extra`).
        for name in _FIELD_ORDER:
            changed_by_field[name][rows] = False
        for name, positions in _slow_field_changes(before, after, rows).items():
            mask = changed_by_field.setdefault(name, np.zeros(len(common), dtype=bool))
            mask[positions] = True
    changed_by_field[EMBEDDING] = _vectors_changed(before, after)
    moved = ~_same(before.column(PARTITION), after.column(PARTITION))
    unknown = sorted(k for k in changed_by_field if k not in _REPORT_ORDER)
    fields = {
        name: common[changed_by_field[name]] for name in (*_REPORT_ORDER, *unknown) if changed_by_field[name].any()
    }
    any_change = np.zeros(len(common), dtype=bool)
    for mask in changed_by_field.values():
        any_change |= mask
    return ChunkDiff(added, removed, common[any_change], common[moved], fields)


def _valid(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.is_valid(column).to_numpy(zero_copy_only=False)


def _same(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Element-wise equality in which null equals null (and only null)."""
    equal = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
    return equal | (pc.is_null(a).to_numpy(zero_copy_only=False) & pc.is_null(b).to_numpy(zero_copy_only=False))


def _slow_field_changes(before: pa.Table, after: pa.Table, rows: np.ndarray) -> dict[str, list[int]]:
    """Field name -> positions (in `rows`' numbering, i.e. of `common`) whose value differs, for rows
    that keep some fields in `extra`: each side's chunk is rebuilt as JSON values and compared key by key."""
    taken = pa.array(rows)
    old_chunks = _chunks_of(before.take(taken))
    new_chunks = _chunks_of(after.take(taken))
    changes: dict[str, list[int]] = {}
    for position, old_chunk, new_chunk in zip(rows.tolist(), old_chunks, new_chunks):
        for key in old_chunk.keys() | new_chunk.keys():
            if old_chunk.get(key, _MISSING) != new_chunk.get(key, _MISSING):
                changes.setdefault(key, []).append(position)
    return changes


def _chunks_of(table: pa.Table) -> list[dict[str, str]]:
    """Each row's fields (but chunk_id and the vector) as name -> exact JSON text of the value."""
    dates = pc.cast(table.column(DATE), pa.string()).to_pylist()
    chunks: list[dict[str, str]] = [{DATE: json.dumps(d)} for d in dates]
    for name in TYPED_FIELDS:
        present = table.column(_PRESENT + name).to_pylist()
        for chunk, is_typed, value in zip(chunks, present, table.column(name).to_pylist()):
            if is_typed:
                chunk[name] = json.dumps(value)
    for chunk, encoded in zip(chunks, table.column(EXTRA).to_pylist()):
        if encoded is not None:
            # `extra` holds the fields no typed column holds, and the original string of a date that is
            # not canonical YYYY-MM-DD (it replaces the typed date's text).
            chunk.update((key, json.dumps(value)) for key, value in json.loads(encoded).items())
    return chunks


def _vectors_changed(before: pa.Table, after: pa.Table) -> np.ndarray:
    old_vectors, new_vectors = _vectors(before), _vectors(after)
    if old_vectors.shape[1] != new_vectors.shape[1] or old_vectors.dtype != new_vectors.dtype:
        return np.ones(len(old_vectors), dtype=bool)
    # Compare bit patterns: NaN == NaN and -0.0 != 0.0, as a byte-exact store should.
    bits = np.dtype(f"<u{old_vectors.dtype.itemsize}")
    return (old_vectors.view(bits) != new_vectors.view(bits)).any(axis=1)


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column(EMBEDDING).combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
