"""`egds push`: a plan as plain data, then objects -> manifests -> card -> ref (SPEC.md §14.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from .card import CARD_KEY, LATEST_KEY, REF_KEY, dataset_card, latest_json, manifest_key, object_key
from .errors import EgdsError, MissingObject, UsageError
from .ids import JSON, PARQUET, short
from .model import Manifest
from .progress import NO_PROGRESS, Progress
from .remotes import HoldingsRecord, RemoteConfig, open_remote
from .store.base import RefMoved, Remote, UploadSource
from .transfer import manifest_object_keys, read_remote_ref_bytes, run_bounded

if TYPE_CHECKING:
    from .repo import Repository

UPLOAD_THREADS = 4


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


def plan_push(repo: Repository, name: str, remote: Remote, record: set[str]) -> PushPlan:
    return _plan_push(repo, name, remote, record)[0]


def _plan_push(repo: Repository, name: str, remote: Remote, record: set[str]) -> tuple[PushPlan, bytes | None]:
    """The plan, and the remote ref's exact bytes as read for it (what the ref's compare-and-swap expects)."""
    head = repo.head()
    if head is None:
        raise UsageError("nothing to push: the repository has no versions; run `egds snapshot` first")
    chain = repo.history()
    chain_ids = {manifest_id for manifest_id, _ in chain}
    remote_ref, remote_ref_bytes = read_remote_ref_bytes(remote)
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
    plan = PushPlan(
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
    return plan, remote_ref_bytes


def push(repo: Repository, name: str, *, dry_run: bool = False, progress: Progress = NO_PROGRESS) -> PushResult:
    config = repo.remotes.get(name)
    remote = open_remote(config.url, title=config.title, description=config.description, license=config.license)
    record = HoldingsRecord(repo.remotes.record_dir / f"{name}.known")
    plan, remote_ref_bytes = _plan_push(repo, name, remote, record.load())
    if dry_run:
        return _push_result(plan, dry_run=True, uploaded=0, nbytes=0, card=False, ref=False)
    if plan.objects or plan.manifests or plan.card or plan.ref_update:
        remote.check_writable()  # before any byte moves: a missing key is a clear error, not a half push

    def upload_object(item: PlannedUpload) -> int:
        object_id, suffix = _parse_object_key(item.key)
        remote.put(item.key, UploadSource(repo.store.object_path(object_id, suffix), object_id, suffix))
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
        _move_remote_ref(remote, name, plan.ref, remote_ref_bytes, {i for i, _ in chain})
    repo.store.write_ref(f"remotes/{name}/main", plan.ref)
    return _push_result(plan, dry_run=False, uploaded=len(plan.objects), nbytes=nbytes, card=plan.card, ref=plan.ref_update)


def _move_remote_ref(remote: Remote, name: str, new: str, expected: bytes | None, chain: set[str]) -> None:
    """Compare-and-swap the remote ref from what the plan read to `new`. If someone pushed since,
    and what they pushed is still in our history (a fast-forward), swap against that instead."""
    for _ in range(3):
        try:
            remote.put_ref(REF_KEY, f"{new}\n".encode(), expected)
            return
        except RefMoved:
            current, expected = read_remote_ref_bytes(remote)
            if current not in chain:
                raise NonFastForward(
                    f"remote {name} moved to {short(current or '')} while pushing: pull first, then push again"
                ) from None
    raise NonFastForward(f"remote {name} keeps moving while pushing: wait for the other pusher, then push again")


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

