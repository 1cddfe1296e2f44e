"""`egds verify` (re-hash everything, check the chain and refs) and `egds gc` (drop what nothing references)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import blake3

from .atomic import fsync_dir
from .card import object_key
from .errors import CorruptObject, EgdsError
from .remotes import HoldingsRecord
from .transfer import manifest_object_keys
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
    from .clone import pending_pull

    pending = pending_pull(repo)
    if pending is not None and pending.id in manifests:
        refs["pull-in-progress"] = pending.id  # what an interrupted pull checks out: kept, as gc keeps it

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
    named_by_reachable = {
        (object_id, suffix)
        for manifest_id in reachable
        for object_id, suffix in manifest_object_keys(manifests[manifest_id])
    }
    orphans = [(i, s) for i, s, _ in objects if (i, s) not in named_by_reachable]
    if orphans:
        # SPEC.md §10.5: an interrupted snapshot or pull can leave objects no ref reaches.
        notes.append(
            f"{len(orphans)} objects are not reachable from any ref (first: {short(orphans[0][0])}{orphans[0][1]}; left by "
            "an interrupted snapshot or pull, or by a version gc has not removed yet); `egds gc` removes them"
        )
    if pending is not None:
        notes.append(
            f"an interrupted `egds pull {pending.remote}` has not finished checking out v{pending.version} "
            f"({short(pending.id)}); main still names the version before it: run `egds pull {pending.remote}` to finish it"
        )
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
        from .clone import pending_pull

        roots = [store.read_ref(name) for name in ["main", *store.ref_names("tags"), *store.ref_names("remotes")]]
        pending = pending_pull(repo)
        if pending is not None and repo.has_manifest(pending.id):
            roots.append(pending.id)  # an interrupted pull's version: its re-run needs it, snapshot checks it
        reachable: set[str] = set()
        for current in roots:
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
            # Reverse dependency order, each step durable before the next (SPEC.md §10, gc): manifests
            # before the objects they name, newest first (a child before its parent), so a gc killed
            # at any point leaves no manifest naming a missing object or parent. (gc deletes no ref.)
            by_version = sorted(manifests, key=lambda i: _version_or_first(repo, i), reverse=True)
            _unlink_durably([store.manifest_path(i) for i in by_version])
            _unlink_durably([path for _, _, path in objects])
            _unlink_durably(temps)
    return GcResult(
        dry_run=dry_run,
        objects=[f"{i}{s}" for i, s, _ in objects],
        manifests=manifests,
        temp_files=[p.name for p in temps],
        bytes_freed=freed,
    )


def _unlink_durably(paths: list[Path]) -> None:
    """Delete `paths` in order, then fsync each directory they were in (the deletions are durable
    before the caller's next step starts)."""
    directories: dict[Path, None] = {}
    for path in paths:
        path.unlink(missing_ok=True)
        directories[path.parent] = None
    for directory in directories:
        fsync_dir(directory)


def _version_or_first(repo: Repository, manifest_id: str) -> float:
    """A manifest's version, for ordering deletions; one that does not decode names nothing egds
    would follow, so it goes first."""
    try:
        return repo.manifest(manifest_id).version
    except EgdsError:
        return float("inf")


# ---- verify --remote ---------------------------------------------------------------------------------


def verify_remote(repo: Repository, name: str, *, deep: bool, progress: Progress) -> VerifyReport:
    """Check what remote `name` serves (SPEC.md §14.4): its ref; every manifest of its history,
    downloaded, re-hashed and checked as a chain; every object those manifests name, against the
    remote's listing (present, the manifest's size, the md5 of the local copy where both exist);
    objects the listing lacks are downloaded to tell "unlisted" (served, not yet listed: archive.org
    still ingesting) from "missing". `deep` downloads and re-hashes every object. Reports every
    problem; writes nothing, locally or on the remote."""
    from .card import REF_KEY, manifest_key
    from .remotes import open_remote
    from .transfer import DOWNLOAD_ATTEMPTS, DOWNLOAD_THREADS, read_remote_ref, run_bounded, walk_manifests

    config = repo.remotes.get(name)
    remote = open_remote(config.url)
    url = remote.url
    problems: list[str] = []
    notes: list[str] = []

    def report(objects: int = 0, manifests: int = 0, nbytes: int = 0, version: int | None = None) -> VerifyReport:
        return VerifyReport(ok=not problems, objects=objects, manifests=manifests, bytes=nbytes, problems=problems,
                            notes=notes, remote=name, url=url, version=version)

    try:
        ref = read_remote_ref(remote)
        inventory = remote.inventory()
    except EgdsError as exc:
        problems.append(str(exc))
        return report()
    if ref is None:
        problems.append(
            f"{url} has no {REF_KEY}, so it holds no version (nothing was pushed there, or the ref was lost); "
            f"run `egds push {name}` to publish this repository's versions to it"
        )
        return report()

    chain: list[tuple[str, bytes, Manifest]] = []
    try:
        for item in walk_manifests(remote, ref, lambda _: False, inventory=inventory, progress=progress):
            chain.append(item)
    except EgdsError as exc:
        below = f" (below version {chain[-1][2].version})" if chain else ""
        problems.append(f"{exc}{below}")
    for manifest_id, data, manifest in chain:
        problems.extend(_listing_problems(url, name, inventory.get(manifest_key(manifest_id)), manifest_key(manifest_id),
                                          f"manifest {short(manifest_id)} (version {manifest.version})", len(data),
                                          hashlib.md5(data).hexdigest()))

    expected = _expected_objects(repo, chain)
    to_download = []
    progress.begin(f"checking the listing of {name}", len(expected), unit="objects")
    for key, item in expected.items():
        listed = inventory.get(key)
        if listed is None or deep:
            to_download.append(key)
        if listed is not None:
            local_md5 = item.local_md5(repo) if listed.md5 else None  # only a listing with md5s is worth the read
            problems.extend(_listing_problems(url, name, listed, key, item.what, item.size, local_md5))
        progress.advance()
    progress.end()

    def check(key: str) -> str | None:
        item = expected[key]
        try:
            data = _download_for_check(remote, key, item, DOWNLOAD_ATTEMPTS)
        except CorruptObject:
            return (f"{url}: {item.what} is damaged: its bytes do not match its name on {DOWNLOAD_ATTEMPTS} downloads; "
                    f"re-push it from a good copy, or report it to the remote's owner")
        except EgdsError as exc:
            return f"{url}: {item.what} is unconfirmed: it could not be read ({exc}); run `egds verify --remote {name}` again"
        finally:
            progress.advance(item.size or 0)
        if data is None:
            if key in inventory:
                return f"{url}: {item.what} is listed but cannot be downloaded; re-push it from a good copy"
            return f"{url}: {item.what} is missing; re-push it from a repository that has it (`egds push {name}` there)"
        if key not in inventory:
            return (f"{url}: {item.what} is unlisted: the remote serves it but does not list it (archive.org may still be "
                    f"ingesting it); run `egds verify --remote {name}` again later")
        return None

    progress.begin(f"downloading from {name}", sum(expected[k].size or 0 for k in to_download), unit="bytes")
    try:
        found = run_bounded(check, to_download, DOWNLOAD_THREADS)
    finally:
        progress.end()
    problems.extend(p for p in found if p is not None)

    from .push import CARD_SETTINGS_KEY
    from .store.directory import LOCK_KEY

    # The card's settings and a directory remote's lock are egds's own files too (SPEC.md §14.1).
    named = set(expected) | {manifest_key(i) for i, _, _ in chain} | {REF_KEY, CARD_SETTINGS_KEY, LOCK_KEY}
    stray = sorted(k for k in inventory if k.startswith("egds/") and k not in named)
    if stray:
        notes.append(
            f"{len(stray)} files under egds/ on {url} are named by no version of its history (first: {stray[0]}; left by "
            "an interrupted or a competing push); they are harmless"
        )
    recorded = HoldingsRecord(repo.remotes.record_dir / f"{name}.known").load()
    unlisted_record = sorted(k for k in recorded if k not in inventory and k not in named and k.startswith("egds/"))
    if unlisted_record:
        notes.append(
            f"{len(unlisted_record)} files this repository recorded as held by {name} are not in its listing and no "
            f"version there names them (first: {unlisted_record[0]})"
        )
    version = chain[0][2].version if chain else None
    head = repo.head()
    if chain and head is not None and head != ref:
        notes.append(f"{name} is at v{version} ({short(ref)}); this repository's main is v{repo.manifest(head).version} "
                     f"({short(head)})")
    return report(len(expected), len(chain), sum(i.size or 0 for i in expected.values()), version)


class _ExpectedObject:
    """An object a remote's history names: its key's parts, expected size and what it is."""

    def __init__(self, object_id: str, suffix: str, size: int | None, what: str) -> None:
        self.object_id, self.suffix, self.size, self.what = object_id, suffix, size, what

    def local_md5(self, repo: Repository) -> str | None:
        """md5 of the local copy, when there is one and it is sound (then the remote must match it)."""
        path = repo.store.object_path(self.object_id, self.suffix)
        if not path.is_file():
            return None
        md5, hasher = hashlib.md5(), blake3.blake3()
        with open(path, "rb") as source:
            while piece := source.read(1 << 20):
                md5.update(piece)
                hasher.update(piece)
        return md5.hexdigest() if hasher.hexdigest() == self.object_id else None


def _expected_objects(repo: Repository, chain: list[tuple[str, bytes, Manifest]]) -> dict[str, _ExpectedObject]:
    """Remote key -> the object every manifest of `chain` names (labelled by the newest one)."""
    from .transfer import object_labels

    expected: dict[str, _ExpectedObject] = {}
    for _, _, manifest in reversed(chain):
        labels = object_labels(manifest)
        sizes = {p.object: p.bytes for p in manifest.partitions}
        for object_id, suffix in manifest_object_keys(manifest):
            size = sizes.get(object_id) if suffix == PARQUET else None
            if size is None and repo.store.has_object(object_id, suffix):
                size = repo.store.object_path(object_id, suffix).stat().st_size
            what = f"object {short(object_id)}{suffix} ({labels[object_id]})"
            expected[object_key(object_id, suffix)] = _ExpectedObject(object_id, suffix, size, what)
    return expected


def _listing_problems(url: str, name: str, listed, key: str, what: str, size: int | None, md5: str | None) -> list[str]:  # noqa: ANN001
    """What the remote's listing says wrongly about `key` (nothing when it does not list it)."""
    if listed is None:
        return []
    if size is not None and listed.size >= 0 and listed.size != size:
        return [f"{url}: {what} is listed as {listed.size:,} bytes but should be {size:,}; re-push it from a good copy, "
                "or report it to the remote's owner"]
    if md5 is not None and listed.md5 and listed.md5 != md5:
        return [f"{url}: {what} is listed with md5 {listed.md5}, not the md5 of its bytes ({md5}); re-push it from a "
                "good copy, or report it to the remote's owner"]
    return []


def _download_for_check(remote, key: str, item: _ExpectedObject, attempts: int) -> bytes | None:  # noqa: ANN001
    from .transfer import MAX_JSON_OBJECT_BYTES, get_verified

    bound = item.size if item.size is not None else MAX_JSON_OBJECT_BYTES
    return get_verified(remote, key, item.object_id, f"{key} is damaged", bound)
