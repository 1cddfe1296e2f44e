"""`egds verify` (re-hash everything, check the chain and refs) and `egds gc` (drop what nothing references)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .card import object_key
from .errors import EgdsError
from .remotes import HoldingsRecord
from .ids import JSON, PARQUET, hash_file, short
from .model import Manifest, decode_manifest
from .parquet_io import read_partition
from .progress import Progress
from .results import GcResult, VerifyReport
from .table import content_hash

if TYPE_CHECKING:
    from .repo import Repository


def verify(repo: Repository, *, deep: bool, progress: Progress) -> VerifyReport:
    """Report every problem, never stop at the first. `deep` also decodes each Parquet object and
    re-derives its content hash (catches a writer bug, not only bit rot)."""
    store = repo.store
    problems: list[str] = []
    notes: list[str] = []
    objects = list(store.iter_objects())
    progress.begin("verifying objects", sum(path.stat().st_size for _, _, path in objects), unit="bytes")
    good_objects: set[tuple[str, str]] = set()
    total_bytes = 0
    for object_id, suffix, path in objects:
        size = path.stat().st_size
        total_bytes += size
        actual = hash_file(path)
        if actual == object_id:
            good_objects.add((object_id, suffix))
        else:
            problems.append(f"object {short(object_id)}{suffix} is corrupt: its bytes hash to {short(actual)} ({path})")
        progress.advance(size)
    progress.end()
    for path in store.stray_files():
        notes.append(f"{path} is not named like an object; egds ignores it")

    manifests: dict[str, Manifest] = {}
    for manifest_id in store.manifest_ids():
        path = store.manifest_path(manifest_id)
        data = path.read_bytes()
        if hash_file(path) != manifest_id:
            problems.append(f"manifest {short(manifest_id)} is corrupt: its bytes do not match its name ({path})")
            continue
        try:
            manifests[manifest_id] = decode_manifest(data, f"manifest {short(manifest_id)}")
        except EgdsError as exc:
            problems.append(str(exc))

    refs: dict[str, str] = {}
    for name in ["main", *store.ref_names("tags"), *store.ref_names("remotes")]:
        try:
            target = store.read_ref(name)
        except EgdsError as exc:
            problems.append(str(exc))
            continue
        if target is None:
            continue
        refs[name] = target
        if target not in manifests and target not in store.manifest_ids():
            problems.append(f"ref {name} names manifest {short(target)}, which is missing")

    reachable: set[str] = set()
    for name, target in refs.items():
        current = target
        while current is not None and current not in reachable and current in manifests:
            reachable.add(current)
            manifest = manifests[current]
            parent = manifest.parent
            if parent is not None:
                if parent not in manifests:
                    problems.append(f"version {manifest.version} ({short(current)}) names parent {short(parent)}, which is missing or corrupt")
                elif manifests[parent].version != manifest.version - 1:
                    problems.append(f"version {manifest.version} ({short(current)}) follows version {manifests[parent].version}; versions must count up by one")
            elif manifest.version != 1:
                problems.append(f"version {manifest.version} ({short(current)}) has no parent; only version 1 may")
            current = parent

    on_remote: set[str] = set()
    for name in repo.remotes.load():
        on_remote |= HoldingsRecord(repo.remotes.record_dir / f"{name}.known").load()
    unfetched: set[str] = set()
    for manifest_id, manifest in manifests.items():
        problems.extend(_check_manifest(manifest_id, manifest, good_objects, store.has_object, on_remote, unfetched))
        if manifest_id not in reachable:
            notes.append(f"manifest {short(manifest_id)} (version {manifest.version}) is not reachable from any ref; `egds gc` removes it")
    if deep:
        _deep_check(repo, manifests, good_objects, problems, progress)
    if unfetched:
        notes.append(f"{len(unfetched)} objects are on a remote but not fetched here (a partial clone); checkout fetches them")
    temps = store.temp_files()
    if temps:
        notes.append(f"{len(temps)} temporary files left by an interrupted command; `egds gc` removes them")
    return VerifyReport(
        ok=not problems, objects=len(objects), manifests=len(manifests), bytes=total_bytes, problems=problems, notes=notes
    )


def _check_manifest(
    manifest_id: str, m: Manifest, good: set[tuple[str, str]], has_object, on_remote: set[str], unfetched: set[str]
) -> list[str]:
    """Problems of one manifest; objects missing here but held by a remote (a partial clone) go to `unfetched`."""
    label = f"version {m.version} ({short(manifest_id)})"
    problems = []
    named = [(p.object, PARQUET, f"object {short(p.object)}.parquet of partition {p.key}") for p in m.partitions]
    named += [(i, JSON, f"{field} object {short(i)}.json") for field, i in (("extras", m.extras), ("index.json", m.index)) if i]
    for object_id, suffix, what in named:
        if (object_id, suffix) in good:
            continue
        if has_object(object_id, suffix):
            problems.append(f"{label}: {what} is corrupt")
        elif object_key(object_id, suffix) in on_remote:
            unfetched.add(object_key(object_id, suffix))
        else:
            problems.append(f"{label}: {what} is missing")
    if sum(p.rows for p in m.partitions) != m.rows:
        problems.append(f"{label}: partition rows add up to {sum(p.rows for p in m.partitions)}, manifest says {m.rows}")
    run_rows = [0] * len(m.partitions)
    for run in m.row_order:
        if not 0 <= run.partition < len(m.partitions) or run.rows <= 0:
            problems.append(f"{label}: row_order names partition {run.partition} of {len(m.partitions)}")
            return problems
        run_rows[run.partition] += run.rows
    if run_rows != [p.rows for p in m.partitions]:
        problems.append(f"{label}: row_order does not account for every partition row")
    keys = [p.key for p in m.partitions]
    if keys != sorted(set(keys)):
        problems.append(f"{label}: partition keys are not unique and sorted")
    return problems


def _deep_check(repo, manifests, good, problems, progress) -> None:
    # Decode each object once, but compare it with *every* entry that names it: an object checked
    # under its right entry in one manifest must still be caught under a wrong entry in another.
    decoded: dict[str, tuple[int, str] | str] = {}  # object -> (rows, content hash) or decode error
    reported: set[tuple[str, str, int, str]] = set()
    entries = [(m, e) for m in manifests.values() for e in m.partitions if (e.object, PARQUET) in good]
    progress.begin("decoding partitions", len(entries), unit="objects")
    for manifest, entry in entries:
        if entry.object not in decoded:
            try:
                table = read_partition(repo.store.object_path(entry.object, PARQUET).read_bytes(), entry, manifest)
                decoded[entry.object] = (table.num_rows, content_hash(table))
            except Exception as exc:  # any decoder failure is a finding, not a crash
                decoded[entry.object] = f"{type(exc).__name__}: {exc}"
        found = decoded[entry.object]
        key = (entry.object, entry.key, entry.rows, entry.content_hash)
        if key not in reported and (isinstance(found, str) or found != (entry.rows, entry.content_hash)):
            reported.add(key)
            if isinstance(found, str):
                problems.append(f"object {short(entry.object)}.parquet (partition {entry.key}) does not decode: {found}")
            else:
                problems.append(f"object {short(entry.object)}.parquet (partition {entry.key}) decodes to content that differs from its manifest entry")
        progress.advance()
    progress.end()


def gc(repo: Repository, *, dry_run: bool) -> GcResult:
    """Delete objects and manifests no ref reaches, and temp files of interrupted commands.

    Runs under the write lock, so no snapshot can be between writing an object and its ref."""
    store = repo.store
    with store.locked():
        reachable: set[str] = set()
        for name in ["main", *store.ref_names("tags"), *store.ref_names("remotes")]:
            current = store.read_ref(name)
            while current is not None and current not in reachable:
                reachable.add(current)
                current = repo.manifest(current).parent
        keep: set[tuple[str, str]] = set()
        for manifest_id in reachable:
            m = repo.manifest(manifest_id)
            keep.update((p.object, PARQUET) for p in m.partitions)
            keep.update((i, JSON) for i in (m.extras, m.index) if i is not None)
        objects = [(i, s, p) for i, s, p in store.iter_objects() if (i, s) not in keep]
        manifests = [i for i in store.manifest_ids() if i not in reachable]
        temps = store.temp_files()
        freed = sum(p.stat().st_size for _, _, p in objects) + sum(p.stat().st_size for p in temps)
        if not dry_run:
            for _, _, path in objects:
                path.unlink()
            for manifest_id in manifests:
                store.manifest_path(manifest_id).unlink()
            for path in temps:
                path.unlink()
    return GcResult(
        dry_run=dry_run,
        objects=[f"{i}{s}" for i, s, _ in objects],
        manifests=manifests,
        temp_files=[p.name for p in temps],
        bytes_freed=freed,
    )
