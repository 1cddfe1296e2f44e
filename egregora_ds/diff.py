"""`egds status` (cache vs latest) and `egds diff A B` (version vs version, down to chunks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cache import file_digests, read_cache
from .ids import PARQUET, hash_bytes
from .model import Manifest, PartitionEntry
from .parquet_io import read_partition
from .results import DiffChunks, DiffIds, DiffPartitions, DiffResult, PartitionStatus, StatusResult
from .table import CHUNK_ID, EMBEDDING, EXTRA

if TYPE_CHECKING:
    from .repo import Repository

TEXT = "text"
TEXT_OTHER = "text_other"
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
    from .snapshot import analyse_cache

    head = repo.head()
    latest = repo.manifest(head) if head else None
    stamp = repo.cache_stamp(cache)
    if latest is not None and stamp is not None and stamp[0] == head and file_digests(cache) == stamp[1]:
        keys = [p.key for p in latest.partitions]
        return StatusResult(
            version=latest.version, id=head, cache=str(cache), clean=True, rows=latest.rows,
            partitions=PartitionStatus(unchanged=keys, changed=[], added=[], removed=[]),
            index_changed=False, extras_changed=False, order_changed=False, model_changed=False,
            partial=None,
        )
    contents = read_cache(cache)
    partitioned, extras = analyse_cache(contents, repo.config.partitioning, allow_nonfinite=True)
    extras_id = hash_bytes(extras) if extras is not None else None
    index_id = hash_bytes(contents.index_bytes) if contents.index_bytes is not None else None
    unchanged, changed, added, removed = compare_partitions(
        _hashes(latest), {p.key: p.content_hash for p in partitioned.partitions}
    )
    index_changed = latest is not None and latest.index != index_id or latest is None and index_id is not None
    extras_changed = latest is not None and latest.extras != extras_id or latest is None and extras_id is not None
    order_changed = latest is not None and latest.row_order != partitioned.row_order
    model_changed = latest is not None and (latest.dim != partitioned.dim or latest.dtype != partitioned.dtype)
    clean = latest is not None and not (changed or added or removed or index_changed or extras_changed or order_changed or model_changed)
    return StatusResult(
        version=latest.version if latest else None,
        id=head,
        cache=str(cache),
        clean=clean,
        rows=partitioned.rows,
        partitions=PartitionStatus(unchanged=unchanged, changed=changed, added=added, removed=removed),
        index_changed=index_changed,
        extras_changed=extras_changed,
        order_changed=order_changed,
        model_changed=model_changed,
        partial=sorted(repo.partial_partitions(cache) or []) or None,
    )


def diff(repo: Repository, rev_a: str, rev_b: str, *, with_ids: bool) -> DiffResult:
    id_a, a = repo.resolve(rev_a)
    id_b, b = repo.resolve(rev_b)
    _, changed, added, removed = compare_partitions(_hashes(a), _hashes(b))
    touched = set(changed) | set(added) | set(removed)
    # Chunks in unchanged partitions are identical in both versions; only the rest need reading.
    old = _chunk_table(repo, a, [p for p in a.partitions if p.key in touched])
    new = _chunk_table(repo, b, [p for p in b.partitions if p.key in touched])
    ids = _diff_chunks(old, new)
    return DiffResult(
        a=id_a,
        b=id_b,
        partitions=DiffPartitions(added=added, removed=removed, changed=changed),
        chunks=DiffChunks(*(len(v) for v in ids)),
        ids=DiffIds(*(v.tolist() for v in ids)) if with_ids else None,
    )


def _chunk_table(repo: Repository, manifest: Manifest, entries: list[PartitionEntry]) -> pa.Table:
    """chunk_id, text and embedding of the given partitions, verified on read."""
    tables = []
    for entry in entries:
        table = read_partition(repo.store.read_object(entry.object, PARQUET, f"partition {entry.key}"), entry, manifest)
        text, text_other = _text_columns(table)
        tables.append(
            pa.table({CHUNK_ID: table.column(CHUNK_ID), TEXT: text, TEXT_OTHER: text_other, EMBEDDING: table.column(EMBEDDING)})
        )
    if not tables:
        empty = pa.array([], pa.string())
        return pa.table({CHUNK_ID: pa.array([], pa.int64()), TEXT: empty, TEXT_OTHER: empty})
    return pa.concat_tables(tables, promote_options="permissive")


def _text_columns(table: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Each chunk's `text` as two columns: the string (null unless it is a string), and the JSON of
    any other value (`null`, `5`, ...; null when it is a string or the chunk has no `text`).

    A partition holds `text` either as a typed column or, when some chunk of it has no text or a
    non-string one, inside `extra`. Both layouts must give the same pair for the same chunk, or every
    unchanged chunk of a partition that switched layout would count as text_changed.
    """
    if TEXT in table.column_names:
        text = table.column(TEXT).combine_chunks().cast(pa.string())
        # A typed column's null is an explicit `"text": null` (a missing field makes the column untyped).
        other = pc.if_else(pc.is_null(text), pa.scalar("null"), pa.scalar(None, pa.string()))
        return text, other
    texts: list[str | None] = []
    others: list[str | None] = []
    for encoded in table.column(EXTRA).to_pylist():
        value = json.loads(encoded).get(TEXT, _MISSING) if encoded is not None else _MISSING
        is_str = type(value) is str
        texts.append(value if is_str else None)
        others.append(None if is_str or value is _MISSING else json.dumps(value, sort_keys=True))
    return pa.array(texts, pa.string()), pa.array(others, pa.string())


def _diff_chunks(old: pa.Table, new: pa.Table) -> tuple[np.ndarray, ...]:
    old_ids = old.column(CHUNK_ID).to_numpy()
    new_ids = new.column(CHUNK_ID).to_numpy()
    added = np.setdiff1d(new_ids, old_ids)
    removed = np.setdiff1d(old_ids, new_ids)
    common, old_rows, new_rows = np.intersect1d(old_ids, new_ids, assume_unique=True, return_indices=True)
    if len(common) == 0:
        empty = np.empty(0, dtype=np.int64)
        return added, removed, empty, empty
    same_text = np.ones(len(common), dtype=bool)
    for name in (TEXT, TEXT_OTHER):
        old_text = old.column(name).take(pa.array(old_rows))
        new_text = new.column(name).take(pa.array(new_rows))
        same = pc.fill_null(pc.equal(old_text, new_text), False).to_numpy(zero_copy_only=False)
        same |= pc.is_null(old_text).to_numpy(zero_copy_only=False) & pc.is_null(new_text).to_numpy(zero_copy_only=False)
        same_text &= same
    old_vectors = _vectors(old)[old_rows]
    new_vectors = _vectors(new)[new_rows]
    if old_vectors.shape[1] != new_vectors.shape[1] or old_vectors.dtype != new_vectors.dtype:
        vector_changed = np.ones(len(common), dtype=bool)
    else:
        # Compare bit patterns: NaN == NaN and -0.0 != 0.0, as a byte-exact store should.
        bits = np.dtype(f"<u{old_vectors.dtype.itemsize}")
        vector_changed = (old_vectors.view(bits) != new_vectors.view(bits)).any(axis=1)
    return added, removed, common[~same_text], common[vector_changed]


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column(EMBEDDING).combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
