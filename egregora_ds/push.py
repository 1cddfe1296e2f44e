"""`egds push` (SPEC.md §14.2): one view of the repository, a plan as plain data, then objects ->
manifests -> the remote lists them all -> the ref (compare-and-swap) -> the card.

The remote's own inventory decides what it holds; the holdings record only remembers uploads the
inventory cannot show yet (archive.org lists a file once its ingest task ran, minutes later). The ref
never moves until the inventory shows everything it reaches, so a remote never names missing data.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from .card import CARD_KEY, LATEST_KEY, PREFIX, REF_KEY, dataset_card, latest_json, manifest_key, object_key
from .errors import EgdsError, MissingObject, UsageError
from .ids import JSON, PARQUET, short
from .model import Manifest
from .progress import NO_PROGRESS, Progress
from .remotes import ABSENT, CONFIRMED, UPLOADED, Holding, HoldingsRecord, RemoteConfig, env_seconds, open_remote
from .revisions import history
from .store.base import RefMoved, Remote, RemoteError, RemoteFile, UploadSource
from .transfer import download_manifests, manifest_object_keys, read_remote_ref_bytes, run_bounded

if TYPE_CHECKING:
    from .repo import Repository

UPLOAD_THREADS = 4
#: Default total time a push waits for a remote whose listing lags (archive.org) to list its uploads.
LISTING_WAIT = 90.0
#: An upload the remote accepted but has not listed for this long is taken as a failed ingest and sent
#: again by the next push; a younger one is waited for, not re-sent. `EGDS_INGEST_GRACE` overrides it.
INGEST_GRACE = 3600.0
#: The longest pause between two listings while waiting.
_MAX_POLL_DELAY = 15.0
#: The title, description and license the remote's card was last written with (SPEC.md §14.1), so a
#: push from a clone (whose remote config has none of them) keeps them instead of publishing a card
#: that says "License: not specified".
CARD_SETTINGS_KEY = f"{PREFIX}/card.json"
_MAX_CARD_SETTINGS_BYTES = 1 << 20


class CardSettings(msgspec.Struct, frozen=True):
    title: str = ""
    description: str = ""
    license: str = ""


class NonFastForward(EgdsError):
    """The remote has versions the local repository does not."""


class ListingPending(EgdsError):
    """Uploads were accepted but the remote does not list them yet, so the ref was not moved.

    Nothing is wrong: running the same push later finishes it (exit status 75, EX_TEMPFAIL)."""

    exit_code = 75


class ForeignRemote(UsageError):
    """The remote holds files egds did not write, and is not an egds remote: push writes nothing there."""


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
    pending: list[str] = []
    """Keys uploaded by an earlier push that the remote accepted but does not list yet: not sent
    again (until INGEST_GRACE has passed); the ref waits for them to be listed."""
    lost: list[str] = []
    """Keys the holdings record saw on the remote that its inventory no longer lists (sent again)."""


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
    temp_files_removed: int = 0
    """Temp files that killed pushes had left on a directory remote, removed by this one."""


class _Planned(msgspec.Struct, frozen=True):
    """A plan plus what executing it needs and the user never sees."""

    plan: PushPlan
    remote_ref_bytes: bytes | None  # what the ref's compare-and-swap expects
    sizes: dict[str, int]  # every key the new ref reaches -> its size (-1: unknown), for the listing check
    confirmed: list[str]  # keys the inventory lists that the record did not have as confirmed
    latest: bytes  # manifest.json as this push writes it
    chain: list[tuple[str, Manifest]]  # the view the card describes
    config: RemoteConfig
    inherit_card_settings: bool  # read the title, description and license from the remote's egds/card.json

    @property
    def idle(self) -> bool:
        p = self.plan
        return not (p.objects or p.manifests or p.pending or p.card or p.ref_update)


def push(
    repo: Repository,
    name: str,
    *,
    dry_run: bool = False,
    progress: Progress = NO_PROGRESS,
    wait: float | None = None,
    ingest_grace: float | None = None,
) -> PushResult:
    """Push `main` to remote `name`. `wait`: how long to wait for a lagging listing (LISTING_WAIT);
    `ingest_grace`: how old an unlisted upload must be to be sent again (INGEST_GRACE)."""
    config = repo.remotes.get(name)
    remote = open_remote(config.url, title=config.title, description=config.description, license=config.license)
    record = HoldingsRecord(repo.remotes.record_dir / f"{name}.known")
    grace = ingest_grace if ingest_grace is not None else env_seconds("EGDS_INGEST_GRACE", INGEST_GRACE)
    # The one read of the local ref: the plan, the uploads, the card and the ref all derive from this
    # head and its (immutable) manifests, so a snapshot recorded meanwhile cannot leak into the push.
    head = repo.head()
    if head is None:
        raise UsageError("nothing to push: the repository has no versions; run `egds snapshot` first")
    chain = _history(repo, head)

    def plan() -> _Planned:
        return _plan(repo, name, config, remote, chain, record.entries(), now=time.time(), grace=grace)

    planned = plan()
    if dry_run:
        return _result(planned.plan, dry_run=True)
    lock = getattr(remote, "locked", None)
    if lock is None:
        return _execute(repo, name, remote, record, planned, progress, LISTING_WAIT if wait is None else wait, grace)
    temps = getattr(remote, "own_temp_files", list)
    if planned.idle and not temps():
        # Up to date, and nothing to clean: read-only, so it needs no write access and no lock.
        repo.store.write_ref(f"remotes/{name}/main", head)
        return _result(planned.plan, dry_run=False)
    remote.check_writable()  # before the lock file is created: a clear error, not an OSError
    with lock():
        removed, _ = remote.remove_own_temp_files()
        # Again under the lock: the previous holder may have moved the ref or uploaded what we planned to.
        planned = plan()
        result = _execute(repo, name, remote, record, planned, progress, LISTING_WAIT if wait is None else wait, grace)
    return msgspec.structs.replace(result, temp_files_removed=removed)


def plan_push(repo: Repository, name: str, remote: Remote, record: HoldingsRecord) -> PushPlan:
    head = repo.head()
    if head is None:
        raise UsageError("nothing to push: the repository has no versions; run `egds snapshot` first")
    planned = _plan(repo, name, repo.remotes.get(name), remote, _history(repo, head), record.entries(),
                    now=time.time(), grace=INGEST_GRACE)
    return planned.plan


def _history(repo: Repository, head: str) -> list[tuple[str, Manifest]]:
    """`head` back to version 1, newest first: manifests are immutable, so this is one consistent view."""
    loaded: dict[str, Manifest] = {}
    current: str | None = head
    while current is not None and current not in loaded:
        loaded[current] = repo.manifest(current)
        current = loaded[current].parent
    return history(head, loaded)


def _plan(
    repo: Repository,
    name: str,
    config: RemoteConfig,
    remote: Remote,
    chain: list[tuple[str, Manifest]],
    holdings: dict[str, Holding],
    *,
    now: float,
    grace: float,
) -> _Planned:
    """Read the remote (its ref, then one inventory) and decide; writes nothing anywhere."""
    head = chain[0][0]
    remote_ref, remote_ref_bytes = read_remote_ref_bytes(remote)
    if remote_ref is not None and remote_ref not in {i for i, _ in chain}:
        raise _refusal(repo, name, config.url, remote, remote_ref, chain)
    inventory = remote.inventory()
    if remote_ref is None:
        _check_ownership(name, remote, inventory)
    lagging = not getattr(remote, "listing_is_immediate", False)

    sizes: dict[str, int] = {}  # objects of every version (oldest first), then manifests (oldest first)
    local: set[str] = set()
    for _, manifest in reversed(chain):
        recorded = {p.object: p.bytes for p in manifest.partitions}
        for object_id, suffix in manifest_object_keys(manifest):
            key = object_key(object_id, suffix)
            if key not in sizes:
                path = repo.store.object_path(object_id, suffix)
                if path.is_file():
                    local.add(key)
                sizes[key] = path.stat().st_size if key in local else recorded.get(object_id, -1)
    for manifest_id, _ in reversed(chain):
        key = manifest_key(manifest_id)
        sizes[key] = repo.store.manifest_path(manifest_id).stat().st_size
        local.add(key)

    uploads: list[PlannedUpload] = []
    manifests: list[str] = []
    pending: list[str] = []
    lost: list[str] = []
    confirmed: list[str] = []
    skipped = 0
    for key, size in sizes.items():
        listed = inventory.get(key)
        held = holdings.get(key)
        if listed is not None and _same_size(listed, size):
            confirmed += [] if held is not None and held.state == CONFIRMED else [key]
            skipped += key.startswith(f"{PREFIX}/objects/")
            continue
        if lagging and held is not None and held.state == UPLOADED and now - held.since < grace:
            pending.append(key)  # accepted recently, not ingested yet: wait for it, do not send it twice
            skipped += key.startswith(f"{PREFIX}/objects/")
            continue
        if held is not None and held.state == CONFIRMED:
            lost.append(key)
        if key not in local:
            object_id, suffix = _parse_object_key(key)
            raise MissingObject(
                f"object {short(object_id)}{suffix} is not in this repository, so it cannot be pushed; "
                "fetch it first (`egds pull`) or run `egds verify`"
            )
        if key.startswith(f"{PREFIX}/manifests/"):
            manifests.append(key)
        else:
            uploads.append(PlannedUpload(key, size))

    latest = latest_json(head, chain[0][1])
    # A push that moves the ref rewrites the card; otherwise only if an earlier push stopped before
    # finishing it. manifest.json is written last and depends on the ref alone, so it tells (README.md
    # also carries the title and license, which a clone's remote config does not have).
    card_stale = remote_ref != head or not _holds(remote, inventory, LATEST_KEY, latest, lagging)
    # A clone's remote config has no title or license: its card keeps those the remote's card had.
    inherit = (not (config.title or config.description or config.license) and remote_ref is not None
               and (CARD_SETTINGS_KEY in inventory or lagging))
    plan = PushPlan(
        remote=name,
        url=remote.url,
        version=chain[0][1].version,
        ref=head,
        remote_ref=remote_ref,
        objects=uploads,
        objects_skipped=skipped,
        manifests=manifests,
        card=card_stale,
        ref_update=remote_ref != head,
        pending=pending,
        lost=lost,
    )
    return _Planned(plan, remote_ref_bytes, sizes, confirmed, latest, chain, config, inherit)


def _execute(
    repo: Repository,
    name: str,
    remote: Remote,
    record: HoldingsRecord,
    planned: _Planned,
    progress: Progress,
    wait: float,
    grace: float,
) -> PushResult:
    plan = planned.plan
    record.record(CONFIRMED, planned.confirmed)
    record.record(ABSENT, plan.lost)
    if planned.idle:
        repo.store.write_ref(f"remotes/{name}/main", plan.ref)
        return _result(plan, dry_run=False)
    remote.check_writable()  # before any byte moves: a missing key is a clear error, not a half push
    lagging = not getattr(remote, "listing_is_immediate", False)
    # On a remote that lists at once, a completed put is as good as listed; elsewhere it is only accepted.
    accepted = UPLOADED if lagging else CONFIRMED

    def upload_object(item: PlannedUpload) -> int:
        object_id, suffix = _parse_object_key(item.key)
        remote.put(item.key, UploadSource(repo.store.object_path(object_id, suffix), object_id, suffix))
        record.record(accepted, [item.key])
        progress.advance(item.bytes)
        return item.bytes

    progress.begin(f"pushing to {name}", sum(o.bytes for o in plan.objects), unit="bytes")
    try:
        nbytes = sum(run_bounded(upload_object, plan.objects, UPLOAD_THREADS))
    finally:
        progress.end()
    for key in plan.manifests:  # oldest first: a manifest's parent is always there before it
        manifest_id = key.rsplit("/", 1)[-1].removesuffix(".json")
        remote.put(key, repo.store.read_manifest_bytes(manifest_id))  # re-hashed as it is read
        record.record(accepted, [key])

    if lagging and (plan.objects or plan.manifests or plan.pending):
        # The inventory must show everything the new ref reaches (one request per look), not just
        # what this push sent: an earlier push's upload can have failed its ingest. (The plan's
        # inventory already showed every key not sent or pending.)
        unlisted = _await_listing(remote, planned.sizes, wait, progress)
        awaited = [o.key for o in plan.objects] + plan.manifests + plan.pending
        record.record(CONFIRMED, sorted(set(awaited) - set(unlisted)))
        if unlisted:
            raise _pending(name, remote, plan, unlisted, wait, grace)

    if plan.ref_update:
        _move_remote_ref(repo, name, remote, plan.ref, planned.remote_ref_bytes)
    elif plan.card:
        # Only the card needs rewriting (an earlier push stopped after the ref): it must describe the
        # ref the remote holds now, which a remote without a lock may have seen move meanwhile.
        current, _ = read_remote_ref_bytes(remote)
        if current != plan.ref:
            raise NonFastForward(f"remote {name} moved to {short(current or '')} while pushing: run `egds pull {name}`, then push again")
    if plan.card:
        # After the ref, by the pusher that moved it: the card and manifest.json describe a ref that exists.
        config = planned.config
        settings = _remote_card_settings(remote) if planned.inherit_card_settings else None
        settings = settings or CardSettings(config.title, config.description, config.license)
        card = remote_card(msgspec.structs.replace(config, **msgspec.structs.asdict(settings)), planned.chain)
        remote.put(CARD_SETTINGS_KEY, msgspec.json.encode(settings) + b"\n")
        remote.put(CARD_KEY, card)
        remote.put(LATEST_KEY, planned.latest)  # last: it is how a later push tells the card is complete
    repo.store.write_ref(f"remotes/{name}/main", plan.ref)
    return _result(plan, dry_run=False, nbytes=nbytes)


def _await_listing(
    remote: Remote,
    sizes: dict[str, int],
    wait: float,
    progress: Progress,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Look at the inventory until it lists every key of `sizes`, for at most `wait` seconds (at
    least one look), pausing 1, 2, 4 … 15 s between looks. Returns the keys still unlisted."""
    deadline = clock() + wait
    delay = 1.0
    missing = dict(sizes)
    progress.begin(f"waiting for {remote.url} to list the uploads", len(missing), unit="files")
    try:
        while True:
            inventory = remote.inventory()
            listed = [k for k, size in missing.items() if k in inventory and _same_size(inventory[k], size)]
            for key in listed:
                del missing[key]
            progress.advance(len(listed))
            remaining = deadline - clock()
            if not missing or remaining <= 0:
                return sorted(missing)
            sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_POLL_DELAY)
    finally:
        progress.end()


def _pending(name: str, remote: Remote, plan: PushPlan, unlisted: list[str], wait: float, grace: float) -> ListingPending:
    sent = len(plan.objects) + len(plan.manifests)
    what = f"sent {sent} files; " if sent else ""
    return ListingPending(
        f"{what}{remote.url} does not list {len(unlisted)} of the files v{plan.version} needs yet (first: "
        f"{unlisted[0]}) after waiting {wait:.0f} s: archive.org ingests uploads through tasks that can take "
        f"minutes, so the remote ref was not moved. Run `egds push {name}` again later; accepted files are not "
        f"sent again unless still unlisted after {_duration(grace)}"
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _move_remote_ref(repo: Repository, name: str, remote: Remote, new: str, expected: bytes | None) -> None:
    """Compare-and-swap the remote ref from what the plan read to `new`. If someone pushed since,
    and what they pushed is still in our history (a fast-forward), swap against that instead."""
    chain = {i for i, _ in _history(repo, new)}
    for _ in range(3):
        try:
            remote.put_ref(REF_KEY, f"{new}\n".encode(), expected)
            return
        except RefMoved:
            current, expected = read_remote_ref_bytes(remote)
            if current not in chain:
                raise NonFastForward(
                    f"remote {name} moved to {short(current or '')} while pushing, so its ref was left alone: "
                    f"run `egds pull {name}`, then `egds push {name}` again"
                ) from None
    raise NonFastForward(f"remote {name} keeps moving while pushing: wait for the other pusher, then push again")


def _refusal(
    repo: Repository, name: str, url: str, remote: Remote, remote_ref: str, chain: list[tuple[str, Manifest]]
) -> NonFastForward:
    """The refusal of a non-fast-forward push, saying what will work: a pull if the remote is only
    ahead, and the ways out if the two histories diverged (pull would refuse: egds does not merge)."""
    head = chain[0][0]
    try:
        # Read-only: the remote's manifests back to one we hold (the walk pull does; nothing is stored).
        fetched = download_manifests(remote, remote_ref, repo.has_manifest)
        tip = fetched[-1][2].parent if fetched else remote_ref
        theirs = {i for i, _, _ in fetched} | ({i for i, _ in _history(repo, tip)} if tip is not None else set())
        remote_version = fetched[0][2].version if fetched else repo.manifest(remote_ref).version
    except EgdsError:
        return NonFastForward(
            f"remote {name} has versions you don't have (its latest is {short(remote_ref)}): pull first "
            f"(`egds pull {name}`), then push again"
        )
    if head in theirs:
        return NonFastForward(
            f"remote {name} has versions you don't have (its latest is v{remote_version}, {short(remote_ref)}): "
            f"pull first: run `egds pull {name}`, then `egds push {name}` again"
        )
    common = next((m.version for i, m in chain if i in theirs), 0)
    target = shlex.quote(str(repo.root.parent / f"{repo.root.name}-{name}"))  # beside this one: runs from anywhere
    return NonFastForward(
        f"local v{chain[0][1].version} and remote {name} (v{remote_version}, {short(remote_ref)}) have diverged "
        f"after v{common}: each has versions the other lacks, and egds does not merge, so a pull cannot help. "
        f"Keep yours by pushing them to a new remote (`egds remote add NAME URL`, then `egds push NAME`), or take "
        f"the remote's with `egds clone {shlex.quote(url)} {target}`"
    )


def _check_ownership(name: str, remote: Remote, inventory: dict[str, RemoteFile]) -> None:
    """Push writes only to an egds remote (one holding `egds/refs/main`) or to a remote holding
    nothing outside `egds/` (empty, or a first push that was interrupted): anything else belongs to
    someone else, and README.md or manifest.json there must not be overwritten."""
    foreign = sorted(k for k in inventory if not k.startswith(f"{PREFIX}/"))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        where = "a new item identifier" if remote.url.startswith("ia:") else "an empty or new directory"
        raise ForeignRemote(
            f"remote {name} ({remote.url}) holds files egds did not write ({shown}) and is not an egds remote, so "
            f"push writes nothing there: push to {where} instead (`egds remote remove {name}`, then "
            f"`egds remote add {name} URL`)"
        )


def _remote_card_settings(remote: Remote) -> CardSettings | None:
    """The settings the remote's card was last written with, or None (absent or not such a document).
    A failed read fails the push (before the card is written; a re-run writes it)."""
    data = remote.get(CARD_SETTINGS_KEY, _MAX_CARD_SETTINGS_BYTES)
    try:
        return None if data is None else msgspec.json.decode(data, type=CardSettings)
    except msgspec.DecodeError:
        return None  # damaged: a card with this repository's (empty) settings, as before there was one


def _same_size(listed: RemoteFile, size: int) -> bool:
    return listed.size == size or listed.size < 0 or size < 0


def _holds(remote: Remote, inventory: dict[str, RemoteFile], key: str, data: bytes, lagging: bool) -> bool:
    """Whether the remote holds exactly `data` under `key`: the inventory's md5 when it gives one,
    else (or when a lagging listing may show an older version) the bytes themselves."""
    listed = inventory.get(key)
    if listed is not None and listed.md5 is not None and listed.md5 == hashlib.md5(data).hexdigest():
        return True
    if listed is None and not lagging:
        return False
    if listed is not None and listed.md5 is None and listed.size not in (len(data), -1):
        return False
    try:
        return remote.get(key, len(data)) == data
    except RemoteError:  # larger than what we would write: not ours as it stands
        return False


def _result(plan: PushPlan, *, dry_run: bool, nbytes: int = 0) -> PushResult:
    done = not dry_run
    return PushResult(
        remote=plan.remote, url=plan.url, version=plan.version, ref=plan.ref, dry_run=dry_run,
        objects_uploaded=len(plan.objects) if done else 0, objects_skipped=plan.objects_skipped,
        bytes_uploaded=nbytes, manifests_uploaded=len(plan.manifests) if done else 0,
        card_uploaded=plan.card and done, ref_updated=plan.ref_update and done,
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
