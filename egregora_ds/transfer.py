"""push / fetch / pull / clone: plans as plain data, then the I/O, in the order SPEC.md requires.

Push uploads objects, then manifests, then the card, then the ref — last, and only after re-reading
it to refuse a non-fast-forward. Fetch downloads manifests and objects and re-hashes every byte.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec

from .card import CARD_KEY, LATEST_KEY, REF_KEY, dataset_card, latest_json, manifest_key, object_key
from .errors import CorruptObject, EgdsError, MissingObject, UsageError
from .ids import JSON, PARQUET, hash_bytes, is_object_id, short
from .model import Manifest, decode_manifest
from .progress import NO_PROGRESS, Progress
from .remotes import HoldingsRecord, RemoteConfig, open_remote
from .store.base import Remote, RemoteError

if TYPE_CHECKING:
    from .repo import Repository

T = TypeVar("T")
R = TypeVar("R")
UPLOAD_THREADS = 4
DOWNLOAD_THREADS = 4
DOWNLOAD_ATTEMPTS = 3
#: What a user can do about a remote that serves wrong or missing data (it is not theirs to repair
#: with `egds verify`, which checks the local repository).
DAMAGED_REMOTE = "the remote is damaged: try again later, re-push from a good copy, or report it to the remote's owner"
INCOMPLETE_REMOTE = "the remote is incomplete: re-push from a repository that has it, or report it to the remote's owner"


def run_bounded(action: Callable[[T], R], items: list[T], workers: int) -> list[R]:
    """`action` over `items` on at most `workers` threads. The first failure cancels the transfers
    not yet started (on a dead link, they would each spend their retries first) and is raised."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(action, item) for item in items]
        for future in as_completed(futures):
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class NonFastForward(EgdsError):
    """The remote has versions the local repository does not."""


class PlannedUpload(msgspec.Struct, frozen=True):
    key: str
    bytes: int


class PushPlan(msgspec.Struct, frozen=True):
    remote: str
    url: str
    version: int
    ref: str
    remote_ref: str | None
    objects: list[PlannedUpload]
    objects_skipped: int
    manifests: list[str]
    card: bool
    ref_update: bool


class PushResult(msgspec.Struct, frozen=True):
    remote: str
    url: str
    version: int
    ref: str
    dry_run: bool
    objects_uploaded: int
    objects_skipped: int
    bytes_uploaded: int
    manifests_uploaded: int
    card_uploaded: bool
    ref_updated: bool
    plan: PushPlan | None = None


class FetchResult(msgspec.Struct, frozen=True):
    remote: str
    ref: str | None
    version: int | None
    manifests_fetched: int
    objects_fetched: int
    bytes_fetched: int


def manifest_object_keys(manifest: Manifest, partitions: set[str] | None = None) -> list[tuple[str, str]]:
    """(object id, suffix) of everything a version needs, optionally only some partitions."""
    needed = [(p.object, PARQUET) for p in manifest.partitions if partitions is None or p.key in partitions]
    needed += [(i, JSON) for i in (manifest.extras, manifest.index) if i is not None]
    return needed


def read_remote_ref(remote: Remote) -> str | None:
    # A ref has no hash to check, but a body damaged in transit (one flipped byte from a bad proxy)
    # is not a manifest id: read it again, as for objects, before calling the remote damaged.
    for _ in range(DOWNLOAD_ATTEMPTS):
        data = remote.get(REF_KEY)
        if data is None:
            return None
        text = data.decode("ascii", errors="replace").strip()
        if is_object_id(text):
            return text
    raise RemoteError(f"{remote.url}: {REF_KEY} is not a manifest id ({text[:40]!r}); {DAMAGED_REMOTE}")


def get_verified(remote: Remote, key: str, expected: str, damaged: str) -> bytes | None:
    """The bytes under `key` that hash to `expected`, or None when the remote lacks `key`.

    A body that fails the hash is fetched again, up to DOWNLOAD_ATTEMPTS times, before `damaged` is
    raised as CorruptObject: damage in transit is transient; only repeated damage is the remote's.
    Manifests get the same retries as objects (they used to fail a whole clone on one bad transfer)."""
    for _ in range(DOWNLOAD_ATTEMPTS):
        data = remote.get(key)
        if data is None:
            return None
        if hash_bytes(data) == expected:
            return data
    raise CorruptObject(damaged)


# ---- push --------------------------------------------------------------------------------------


def plan_push(repo: Repository, name: str, remote: Remote, record: set[str]) -> PushPlan:
    head = repo.head()
    if head is None:
        raise UsageError("nothing to push: the repository has no versions; run `egds snapshot` first")
    chain = repo.history()
    chain_ids = {manifest_id for manifest_id, _ in chain}
    remote_ref = read_remote_ref(remote)
    if remote_ref is not None and remote_ref not in chain_ids:
        raise NonFastForward(
            f"remote {name} has versions you don't have (its latest is {short(remote_ref)}): pull first"
        )
    inventory = remote.inventory()
    present = set(inventory) | record
    uploads: dict[str, PlannedUpload] = {}
    seen: set[str] = set()
    skipped = 0
    for _, manifest in reversed(chain):
        for object_id, suffix in manifest_object_keys(manifest):
            key = object_key(object_id, suffix)
            if key in seen:
                continue
            seen.add(key)
            size = repo.store.object_path(object_id, suffix).stat().st_size if repo.store.has_object(object_id, suffix) else -1
            listed = inventory.get(key)
            if key in present and (listed is None or listed.size in (size, -1)):
                skipped += 1
                continue
            if size < 0:
                raise MissingObject(
                    f"object {short(object_id)}{suffix} is not in this repository, so it cannot be pushed; "
                    "fetch it first (`egds pull`) or run `egds verify`"
                )
            uploads[key] = PlannedUpload(key, size)
    manifests = [manifest_key(i) for i, _ in reversed(chain) if manifest_key(i) not in present]
    changed = bool(uploads or manifests) or remote_ref != head
    return PushPlan(
        remote=name,
        url=remote.url,
        version=chain[0][1].version,
        ref=head,
        remote_ref=remote_ref,
        objects=list(uploads.values()),
        objects_skipped=skipped,
        manifests=manifests,
        card=changed or CARD_KEY not in present,
        ref_update=remote_ref != head,
    )


def push(repo: Repository, name: str, *, dry_run: bool = False, progress: Progress = NO_PROGRESS) -> PushResult:
    config = repo.remotes.get(name)
    remote = open_remote(config.url, title=config.title, description=config.description)
    record = HoldingsRecord(repo.remotes.record_dir / f"{name}.known")
    plan = plan_push(repo, name, remote, record.load())
    if dry_run:
        return _push_result(plan, dry_run=True, uploaded=0, nbytes=0, card=False, ref=False)
    if plan.objects or plan.manifests or plan.card or plan.ref_update:
        remote.check_writable()  # before any byte moves: a missing key is a clear error, not a half push

    def upload_object(item: PlannedUpload) -> int:
        object_id, suffix = _parse_object_key(item.key)
        remote.put(item.key, repo.store.object_path(object_id, suffix))
        record.add(item.key)
        progress.advance(item.bytes)
        return item.bytes

    progress.begin(f"pushing to {name}", sum(o.bytes for o in plan.objects), unit="bytes")
    try:
        nbytes = sum(run_bounded(upload_object, plan.objects, UPLOAD_THREADS))
    finally:
        progress.end()
    for key in plan.manifests:  # oldest first: a manifest's parent is always there before it
        manifest_id = key.rsplit("/", 1)[-1].removesuffix(".json")
        remote.put(key, repo.store.read_manifest_bytes(manifest_id))
        record.add(key)
    chain = repo.history()
    if plan.card:
        remote.put(LATEST_KEY, latest_json(plan.ref, chain[0][1]))
        remote.put(CARD_KEY, remote_card(config, chain))
        record.add(CARD_KEY)
    if plan.ref_update:
        # Re-read the ref just before moving it: someone may have pushed since we planned.
        current = read_remote_ref(remote)
        if current != plan.remote_ref and current not in {i for i, _ in chain}:
            raise NonFastForward(f"remote {name} moved to {short(current or '')} while pushing: pull first, then push again")
        remote.put(REF_KEY, f"{plan.ref}\n".encode())
    repo.store.write_ref(f"remotes/{name}/main", plan.ref)
    return _push_result(plan, dry_run=False, uploaded=len(plan.objects), nbytes=nbytes, card=plan.card, ref=plan.ref_update)


def _push_result(plan: PushPlan, *, dry_run: bool, uploaded: int, nbytes: int, card: bool, ref: bool) -> PushResult:
    return PushResult(
        remote=plan.remote, url=plan.url, version=plan.version, ref=plan.ref, dry_run=dry_run,
        objects_uploaded=uploaded, objects_skipped=plan.objects_skipped, bytes_uploaded=nbytes,
        manifests_uploaded=0 if dry_run else len(plan.manifests), card_uploaded=card, ref_updated=ref,
        plan=plan if dry_run else None,
    )


def remote_card(config: RemoteConfig, chain: list[tuple[str, Manifest]]) -> bytes:
    """The README.md dataset card `push` uploads to the remote described by `config`."""
    if config.url.startswith("ia:"):
        base, clone_url = f"https://archive.org/download/{config.url[3:]}", config.url
    else:
        base, clone_url = ".", config.url
    title = config.title or f"egds dataset ({config.url})"
    return dataset_card(chain, title=title, description=config.description, license=config.license,
                        base_url=base, clone_url=clone_url)


def _parse_object_key(key: str) -> tuple[str, str]:
    name = key.rsplit("/", 1)[-1]
    for suffix in (PARQUET, JSON):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    raise ValueError(key)


# ---- fetch -------------------------------------------------------------------------------------


def download_manifests(repo: Repository, remote: Remote, head: str) -> list[tuple[str, bytes, Manifest]]:
    """Download and verify every manifest from `head` back to one we already have; write nothing.

    Newest first. Callers decide (e.g. after a divergence check) whether to store them."""
    fetched: list[tuple[str, bytes, Manifest]] = []
    seen: set[str] = set()
    current: str | None = head
    while current is not None and current not in seen and not repo.store.manifest_path(current).is_file():
        seen.add(current)
        data = get_verified(
            remote, manifest_key(current), current,
            f"manifest {short(current)} from {remote.url} failed its hash check {DOWNLOAD_ATTEMPTS} times; {DAMAGED_REMOTE}",
        )
        if data is None:
            raise MissingObject(f"{remote.url} lacks manifest {short(current)}; {INCOMPLETE_REMOTE}")
        manifest = decode_manifest(data, f"manifest {short(current)} from {remote.url}", DAMAGED_REMOTE)
        fetched.append((current, data, manifest))
        current = manifest.parent
    return fetched


def store_manifests(repo: Repository, fetched: list[tuple[str, bytes, Manifest]], record: HoldingsRecord | None) -> int:
    """Store downloaded manifests, oldest first (a stored manifest's parent is always stored).

    A remote receives a manifest only after all its objects (SPEC.md, push order), so the record
    notes those objects as held by the remote: a partial clone knows where the rest lives."""
    for manifest_id, data, manifest in reversed(fetched):
        repo.store.put_manifest(data)
        if record is not None:
            record.add_many([manifest_key(manifest_id), *(object_key(i, s) for i, s in manifest_object_keys(manifest))])
    return len(fetched)


def fetch_manifests(repo: Repository, remote: Remote, head: str, record: HoldingsRecord | None = None) -> int:
    """Download, verify and store every manifest from `head` back to one we already have."""
    return store_manifests(repo, download_manifests(repo, remote, head), record)


def fetch_objects(
    repo: Repository, remote: Remote, needed: list[tuple[str, str]], record: HoldingsRecord | None, progress: Progress
) -> tuple[int, int]:
    """Download the objects not yet stored locally; every byte re-hashed, retried, then refused."""
    missing = sorted({(i, s) for i, s in needed if not repo.store.has_object(i, s)})

    def download(item: tuple[str, str]) -> int:
        object_id, suffix = item
        key = object_key(object_id, suffix)
        data = get_verified(
            remote, key, object_id,
            f"object {short(object_id)}{suffix} from {remote.url} failed its hash check {DOWNLOAD_ATTEMPTS} times; "
            "nothing was written; try again later or report the damaged remote",
        )
        if data is None:
            raise MissingObject(f"{remote.url} lacks object {short(object_id)}{suffix}; {INCOMPLETE_REMOTE}")
        repo.store.put_object_bytes(data, suffix)
        if record is not None:
            record.add(key)
        progress.advance(len(data))
        return len(data)

    progress.begin("fetching objects", None, unit="bytes")
    try:
        sizes = run_bounded(download, missing, DOWNLOAD_THREADS)
    finally:
        progress.end()
    return len(sizes), sum(sizes)


# ---- pull and clone ----------------------------------------------------------------------------


class PullResult(msgspec.Struct, frozen=True):
    remote: str
    version: int
    id: str
    updated: bool
    """False when the local repository already had the remote's latest version."""
    manifests_fetched: int
    objects_fetched: int
    bytes_fetched: int
    cache: str | None
    """The cache the new version was checked out into (None when nothing changed)."""


class CloneResult(msgspec.Struct, frozen=True):
    directory: str
    url: str
    version: int
    id: str
    rows: int
    partitions: list[str]
    """Partitions the checked-out cache holds."""
    partial: bool
    manifests_fetched: int
    objects_fetched: int
    bytes_fetched: int


class Diverged(EgdsError):
    """Local and remote histories have both moved on; egds does not merge."""


def pull(repo: Repository, name: str, *, progress: Progress = NO_PROGRESS) -> PullResult:
    from .checkout import ensure_cache_is_saved

    config = repo.remotes.get(name)
    remote = open_remote(config.url)
    remote_ref = read_remote_ref(remote)
    if remote_ref is None:
        raise UsageError(f"remote {name} ({config.url}) has no versions yet; push to it first")
    head = repo.head()
    if head == remote_ref:
        m = repo.manifest(head)
        return PullResult(name, m.version, head, False, 0, 0, 0, None)
    # Refuse before touching anything: moving `main` under unsaved work would let the next
    # snapshot silently drop the pulled changes.
    ensure_cache_is_saved(repo, repo.cache_path)
    record = HoldingsRecord(repo.remotes.record_dir / f"{name}.known")
    with repo.store.locked():
        # Download and check before storing anything: a diverged pull leaves `.egds/` as it was.
        downloaded = download_manifests(repo, remote, remote_ref)
        known_tip = downloaded[-1][2].parent if downloaded else remote_ref
        remote_chain = {i for i, _, _ in downloaded}
        if known_tip is not None:
            remote_chain |= {i for i, _ in _chain_from(repo, known_tip)}
        if head is not None and head not in remote_chain:
            if remote_ref in {i for i, _ in repo.history()}:
                m = repo.manifest(head)
                return PullResult(name, m.version, head, False, 0, 0, 0, None)
            raise Diverged(
                f"local v{repo.manifest(head).version} and remote {name} have diverged (both recorded new versions); "
                "egds does not merge: clone the remote elsewhere, or keep yours and push to a new remote"
            )
        manifests = store_manifests(repo, downloaded, record)
        partial = repo.partial_partitions(repo.cache_path)
        target = repo.manifest(remote_ref)
        objects, nbytes = fetch_objects(repo, remote, manifest_object_keys(target, partial), record, progress)
        repo.store.write_ref("main", remote_ref)
        repo.store.write_ref(f"remotes/{name}/main", remote_ref)
    keys = None if partial is None else sorted(partial & {p.key for p in target.partitions})
    result = repo.checkout(remote_ref, partitions=keys, force=True, progress=progress)
    return PullResult(name, target.version, remote_ref, True, manifests, objects, nbytes, result.cache)


def _chain_from(repo: Repository, head: str) -> list[tuple[str, Manifest]]:
    from .revisions import history

    loaded: dict[str, Manifest] = {}
    current: str | None = head
    while current is not None and current not in loaded:
        loaded[current] = repo.manifest(current)
        current = loaded[current].parent
    return history(head, loaded)


def default_clone_directory(url: str) -> str:
    return url[3:] if url.startswith("ia:") else Path(url).name or "egds-clone"


def clone(
    url: str,
    directory: Path | None = None,
    *,
    rev: str = "latest",
    partitions: list[str] | None = None,
    progress: Progress = NO_PROGRESS,
    base: Path | None = None,
) -> CloneResult:
    """`base`: the directory a relative URL or DIR is relative to (default: the current one)."""
    import shutil

    from .remotes import normalise_url
    from .repo import Repository

    base = Path.cwd() if base is None else base
    url = normalise_url(url, base)
    remote = open_remote(url)
    remote_ref = read_remote_ref(remote)
    if remote_ref is None:
        raise UsageError(f"{url} holds no egds data (no {REF_KEY}); check the URL")
    target = (base / (directory or Path(default_clone_directory(url)))).resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} already exists and is not an empty directory; choose another DIR")
    head_bytes = get_verified(
        remote, manifest_key(remote_ref), remote_ref,
        f"{url}: the latest manifest {short(remote_ref)} failed its hash check {DOWNLOAD_ATTEMPTS} times; {DAMAGED_REMOTE}",
    )
    if head_bytes is None:
        raise CorruptObject(f"{url}: the latest manifest {short(remote_ref)} is missing; {INCOMPLETE_REMOTE}")
    head = decode_manifest(head_bytes, f"manifest {short(remote_ref)} from {url}", DAMAGED_REMOTE)
    created = not target.exists()
    try:
        repo = Repository.init(target, partitioning=head.partitioning, model=head.model)
        repo.remotes.add("origin", RemoteConfig(url=url))
        record = HoldingsRecord(repo.remotes.record_dir / "origin.known")
        manifests = fetch_manifests(repo, remote, remote_ref, record)
        repo.store.write_ref("main", remote_ref)
        repo.store.write_ref("remotes/origin/main", remote_ref)
        manifest_id, manifest = repo.resolve(rev)
        keys = [p.key for p in manifest.partitions]
        if partitions is not None:
            unknown = sorted(set(partitions) - set(keys))
            if unknown:
                raise UsageError(f"v{manifest.version} has no partition {', '.join(unknown)}; it has {', '.join(keys) or 'none'}")
            keys = [k for k in keys if k in set(partitions)]
        wanted = set(keys) if partitions is not None else None
        objects, nbytes = fetch_objects(repo, remote, manifest_object_keys(manifest, wanted), record, progress)
        repo.checkout(manifest_id, partitions=keys if partitions is not None else None, progress=progress)
    except BaseException:
        # No half clone: remove what we created (only what we created).
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    return CloneResult(
        directory=str(target), url=url, version=manifest.version, id=manifest_id, rows=sum(
            p.rows for p in manifest.partitions if p.key in set(keys)),
        partitions=keys, partial=partitions is not None, manifests_fetched=manifests,
        objects_fetched=objects, bytes_fetched=nbytes,
    )


def fetch_for_checkout(repo: Repository, needed: list[tuple[str, str]], progress: Progress) -> None:
    """Fetch objects a checkout needs that are not stored locally, from the first remote that has them."""
    missing = [(i, s) for i, s in needed if not repo.store.has_object(i, s)]
    if not missing:
        return
    remotes = repo.remotes.load()
    names = sorted(remotes, key=lambda n: (n != "origin", n))
    if not names:
        raise MissingObject(
            f"{len(missing)} objects of this version are not stored locally (first: {short(missing[0][0])}) "
            "and no remote is configured to fetch them from; run `egds verify`"
        )
    last_error: EgdsError | None = None
    for name in names:
        try:
            record = HoldingsRecord(repo.remotes.record_dir / f"{name}.known")
            fetch_objects(repo, open_remote(remotes[name].url), missing, record, progress)
            return
        except EgdsError as exc:
            last_error = exc
    assert last_error is not None
    raise last_error
