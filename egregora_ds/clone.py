"""`egds pull` and `egds clone` (SPEC.md §14.3): fetch verified manifests and objects, check the
version out, and only then move the refs that claim it.

Both are resumable. Pull writes `.egds/pull-in-progress` before it touches the cache and moves
`main` after the checkout, so a pull killed (or failing) at any point leaves `main` naming the
version the cache holds, and running it again finishes it. Clone writes
`.egds/clone-in-progress` before anything else in the new directory and removes it last; running
the same clone command again finishes an interrupted one, and every other command in that
directory says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from .atomic import atomic_write_bytes, fsync_dir
from .card import REF_KEY
from .checkout import select_partitions
from .errors import CorruptObject, EgdsError, UnsavedWork, UsageError
from .ids import short
from .model import FORMAT_VERSION, Config, Manifest, encode_config
from .progress import NO_PROGRESS, Progress
from .remotes import HoldingsRecord, RemoteConfig, open_remote
from .revisions import resolve_version
from .transfer import (
    DAMAGED_REMOTE,
    download_manifests,
    fetch_objects,
    manifest_object_keys,
    object_labels,
    object_size_bounds,
    read_remote_ref,
    store_manifests,
)

if TYPE_CHECKING:
    from .repo import Repository

PULL_MARKER = "pull-in-progress"
CLONE_MARKER = "clone-in-progress"
_STAGING_PREFIX = ".egds-clone-"


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
    resumed: bool = False
    """True when this call finished a clone that an earlier, interrupted one had started."""
    already_cloned: bool = False
    """True when the directory already held a finished clone of the URL (nothing was done)."""


class Diverged(EgdsError):
    """Local and remote histories have both moved on; egds does not merge."""


class PendingPull(msgspec.Struct, frozen=True):
    """`.egds/pull-in-progress`: a pull that may have started rewriting the cache but has not yet
    moved `main` to the version it checks out."""

    remote: str
    id: str
    version: int


class PendingClone(msgspec.Struct, frozen=True):
    """`.egds/clone-in-progress`: the directory holds a clone of `url` that has not finished."""

    url: str
    created: bool
    """True when the clone created the directory (a failed clone then removes it)."""


# ---- pull ------------------------------------------------------------------------------------------


def pull(repo: Repository, name: str, *, progress: Progress = NO_PROGRESS) -> PullResult:
    """Fast-forward `main` to the remote's latest version and check it out (SPEC.md §14.3, "Pull").

    Under the repository lock from start to end, so no snapshot can run while the cache and `main`
    disagree. Order: download and check the manifests, refuse a divergence, store the manifests,
    fetch the objects, record the pending pull, check the version out (journaled), then move `main`
    and `refs/remotes/NAME/main` and clear the record."""
    config = repo.remotes.get(name)
    remote = open_remote(config.url)
    with repo.store.locked():
        remote_ref = read_remote_ref(remote)
        if remote_ref is None:
            raise UsageError(f"remote {name} ({config.url}) has no versions yet; push to it first")
        head = repo.head()
        if head == remote_ref:
            # Also the end of a pull killed after it moved `main`: finish its last steps.
            _finish_pull(repo, name, remote_ref)
            m = repo.manifest(head)
            return PullResult(name, m.version, head, False, 0, 0, 0, None)
        local_chain = dict(repo.history()) if head is not None else {}
        if remote_ref in local_chain:
            m = repo.manifest(head)  # type: ignore[arg-type]
            return PullResult(name, m.version, head, False, 0, 0, 0, None)  # type: ignore[arg-type]
        _ensure_cache_is_saved_for_pull(repo, name)
        # Download and check before storing anything: a diverged pull leaves `.egds/` as it was.
        downloaded = download_manifests(
            remote, remote_ref, local_chain.__contains__, known_version=lambda i: local_chain[i].version,
            local=repo.store, progress=progress,
        )
        base = downloaded[-1][2].parent
        if head is not None and base != head:
            raise _diverged(repo, name, config.url, head, remote_ref, downloaded[0][2], base)
        record = HoldingsRecord(repo.remotes.record_dir / f"{name}.known")
        manifests = store_manifests(repo, downloaded, record)
        target = downloaded[0][2]
        partial = repo.partial_partitions(repo.cache_path)
        objects, nbytes = fetch_objects(
            repo, remote, manifest_object_keys(target, partial), record, progress, object_size_bounds([target]),
            object_labels(target),
        )
        _write_json(repo.store.root / PULL_MARKER, PendingPull(name, remote_ref, target.version))
        keys = None if partial is None else sorted(partial & {p.key for p in target.partitions})
        # The cache is rebuilt before any ref claims it. A re-run after a kill finds the cache already
        # holding the target (its stamp says so) and only moves the refs.
        result = repo.checkout(remote_ref, partitions=keys, progress=progress)
        repo.store.write_ref("main", remote_ref)
        _finish_pull(repo, name, remote_ref)
    return PullResult(name, target.version, remote_ref, True, manifests, objects, nbytes, result.cache)


def _finish_pull(repo: Repository, name: str, remote_ref: str) -> None:
    if repo.store.read_ref(f"remotes/{name}/main") != remote_ref:
        repo.store.write_ref(f"remotes/{name}/main", remote_ref)
    marker = repo.store.root / PULL_MARKER
    if marker.exists() and pending_pull(repo) is None:  # it names this version (now main), or is unreadable
        marker.unlink()
        fsync_dir(marker.parent)


def pending_pull(repo: Repository) -> PendingPull | None:
    """The pull that was interrupted between rewriting the cache and moving `main`, if any."""
    try:
        pending = msgspec.json.decode((repo.store.root / PULL_MARKER).read_bytes(), type=PendingPull)
    except (FileNotFoundError, msgspec.DecodeError):
        return None
    return None if pending.id == repo.head() else pending


def refuse_snapshot_during_pull(repo: Repository, cache: Path) -> None:
    """Called by snapshot (under the lock): an interrupted pull may have left the cache holding the
    pulled version while `main` still names the old one; recording it would fork the history. Only
    that case is refused: a cache holding main's version, or the user's own edits, is recorded."""
    pending = pending_pull(repo)
    if pending is None or cache != repo.cache_path or not repo.has_manifest(pending.id):
        return
    if _cache_holds(repo, cache, pending.id) and not _cache_holds(repo, cache, repo.head()):
        raise UsageError(
            f"an interrupted `egds pull {pending.remote}` checked out v{pending.version} into {cache}, and main does "
            f"not name it yet; run `egds pull {pending.remote}` to finish it, then snapshot"
        )


def _cache_holds(repo: Repository, cache: Path, manifest_id: str | None) -> bool:
    """Whether the cache's content is exactly version `manifest_id` (its stamp, else its content)."""
    from .cache import file_digests
    from .errors import CacheError

    if manifest_id is None:
        return False
    digests = file_digests(cache)
    if digests is None:
        return False
    for stamp in (repo.cache_stamp(cache), repo.partial_stamp(cache)):
        if stamp is not None and stamp[-1] == digests:
            return stamp[0] == manifest_id
    from .cache import read_cache
    from .ids import hash_bytes
    from .snapshot import Fingerprint, analyse_cache

    try:
        contents = read_cache(cache)
        partitioned, extras = analyse_cache(contents, repo.config.partitioning, allow_nonfinite=True)
    except CacheError:
        return False
    mine = Fingerprint.of_cache(
        partitioned, partitioned.partitions, hash_bytes(extras) if extras is not None else None,
        hash_bytes(contents.index_bytes) if contents.index_bytes is not None else None,
    )
    return Fingerprint.of_manifest(repo.manifest(manifest_id)) == mine


def _ensure_cache_is_saved_for_pull(repo: Repository, name: str) -> None:
    """Refuse before touching anything: moving `main` under unsaved work would let the next
    snapshot silently drop the pulled changes. The advice is pull's own (it has no --force)."""
    from .checkout import ensure_cache_is_saved

    try:
        ensure_cache_is_saved(repo, repo.cache_path)
    except UnsavedWork as exc:
        what = str(exc).split("; run `egds snapshot`")[0]
        raise UnsavedWork(
            f"{what}, and pull would overwrite it: record it first with `egds snapshot` (then publish it to a remote "
            f"of your own, as pull cannot merge it), or discard it with `egds checkout --force`; then run "
            f"`egds pull {name}` again"
        ) from None


def _diverged(
    repo: Repository, name: str, url: str, head: str, remote_ref: str, remote_head: Manifest, base: str | None
) -> Diverged:
    local = repo.manifest(head)
    since = f"both recorded versions after v{repo.manifest(base).version}" if base is not None else "they share no version"
    beside = _free_sibling(repo.root, name)
    return Diverged(
        f"local v{local.version} ({short(head)}) and remote {name}'s v{remote_head.version} ({short(remote_ref)}) have "
        f"diverged ({since}); egds does not merge. To work from the remote's history, clone it beside this one: "
        f"`egds clone {url} {beside}`; to keep yours, push them to another remote: `egds remote add NAME URL`, then "
        f"`egds push NAME`"
    )


def _free_sibling(root: Path, name: str) -> Path:
    """A path beside `root` that does not exist yet, for the clone a Diverged message suggests."""
    candidate = root.with_name(f"{root.name}-{name}")
    n = 2
    while candidate.exists():
        candidate = root.with_name(f"{root.name}-{name}-{n}")
        n += 1
    return candidate


# ---- clone -----------------------------------------------------------------------------------------


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
    """`base`: the directory a relative URL or DIR is relative to (default: the current one).

    Order (SPEC.md §14.3, "Clone"): read the ref and the whole manifest chain, check `rev` and
    `partitions` (nothing is created for a damaged remote or a bad request); create the directory
    with `.egds/clone-in-progress` first; store the manifests, fetch the objects, check the version
    out, write `main` and `refs/remotes/origin/main`, and remove the marker last. A directory that
    holds the marker for the same URL is resumed; a clone that fails with an error removes what
    clones created."""
    from .remotes import normalise_url

    base = Path.cwd() if base is None else base
    url = normalise_url(url, base)
    remote = open_remote(url)
    target = (base / (directory or Path(default_clone_directory(url)))).resolve()
    finished = _finished_clone(target, url)
    if finished is not None:
        return finished
    resuming = _resumable_clone(target, url)
    remote_ref = read_remote_ref(remote)
    if remote_ref is None:
        raise UsageError(f"{url} holds no egds data (no {REF_KEY}); check the URL")
    # The whole chain, verified, before anything is created: a damaged remote leaves no directory.
    local = _existing_store(target) if resuming else None
    downloaded = download_manifests(remote, remote_ref, lambda _: False, local=local, progress=progress)
    head = downloaded[0][2]
    chain = [(i, m) for i, _, m in downloaded]
    try:
        manifest_id = resolve_version(rev, chain, {}, [i for i, _ in chain])
    except EgdsError as exc:
        raise type(exc)(f"{exc}".replace("; see `egds log`", "") + f" (in {url}'s history; tags are not cloned)") from None
    manifest = dict(chain)[manifest_id]
    keys = _clone_partitions(manifest, partitions, url)
    created = not target.exists() if resuming is None else resuming.created
    try:
        repo = _create_or_reopen(target, url, head, created, resuming is not None)
        record = HoldingsRecord(repo.remotes.record_dir / "origin.known")
        manifests = store_manifests(repo, downloaded, record)
        objects, nbytes = fetch_objects(
            repo, remote, manifest_object_keys(manifest, set(keys) if partitions is not None else None), record,
            progress, object_size_bounds([manifest]), object_labels(manifest),
        )
        # The directory is the clone's own (the marker says so), so an interrupted checkout's cache is
        # simply rewritten.
        try:
            repo.checkout(manifest_id, partitions=keys if partitions is not None else None, force=True, progress=progress)
        except CorruptObject as exc:  # every object came from the remote: name it
            raise CorruptObject(f"{exc}; it came from {url}, so {DAMAGED_REMOTE}") from None
        repo.store.write_ref("main", remote_ref)
        repo.store.write_ref("remotes/origin/main", remote_ref)
        marker = repo.store.root / CLONE_MARKER
        marker.unlink()
        fsync_dir(marker.parent)
    except EgdsError:
        # No half clone: remove what clones create (only that).
        _remove_clone(target, created)
        raise
    return CloneResult(
        directory=str(target), url=url, version=manifest.version, id=manifest_id,
        rows=sum(p.rows for p in manifest.partitions if p.key in set(keys)),
        partitions=keys, partial=partitions is not None, manifests_fetched=manifests,
        objects_fetched=objects, bytes_fetched=nbytes, resumed=resuming is not None,
    )


def _clone_partitions(manifest: Manifest, partitions: list[str] | None, url: str) -> list[str]:
    available = ", ".join(p.key for p in manifest.partitions) or "none"
    if partitions is not None and not partitions:
        raise UsageError(
            f"--partitions names no partition, which would clone 0 rows; version {manifest.version} of {url} has "
            f"{available}: name some of them (comma-separated), or leave --partitions out for all"
        )
    return select_partitions(manifest, partitions)


def pending_clone(root: Path) -> PendingClone | None:
    """The unfinished clone `root` holds, if any (its `.egds/clone-in-progress`)."""
    from .repo import REPO_DIR

    try:
        return msgspec.json.decode((root / REPO_DIR / CLONE_MARKER).read_bytes(), type=PendingClone)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except msgspec.DecodeError:
        return PendingClone(url="", created=False)


def unfinished_clone_message(root: Path, pending: PendingClone) -> str:
    """What to tell a user who runs a command in a directory an interrupted clone left behind."""
    if not pending.url:
        return f"{root} holds an interrupted clone; delete {root} and clone again"
    return (
        f"{root} holds an interrupted clone of {pending.url}; run `egds clone {pending.url} {root}` to finish it "
        f"(or delete {root})"
    )


def _resumable_clone(target: Path, url: str) -> PendingClone | None:
    """None for an absent or empty target; the pending clone of `url` it holds; else refuse."""

    if not target.exists():
        return None
    if not target.is_dir():
        raise UsageError(f"{target} already exists and is not an empty directory; choose another DIR")
    entries = list(target.iterdir())
    if not entries:
        return None
    pending = pending_clone(target)
    if pending is not None and pending.url == url:
        return pending
    if pending is not None:
        raise UsageError(unfinished_clone_message(target, pending))
    if all(p.name.startswith(_STAGING_PREFIX) and p.name.endswith(".tmp") and p.is_dir() for p in entries):
        # Killed while building `.egds/`, before it was renamed into place: nothing else was written.
        for staging in entries:
            shutil.rmtree(staging)
        return None
    raise UsageError(f"{target} already exists and is not an empty directory; choose another DIR")


def _finished_clone(target: Path, url: str) -> CloneResult | None:
    """The result of a clone of `url` that already finished in `target` (a re-run after a kill that
    came just after the marker was removed is then a no-op, not an error), else None."""
    from .repo import REPO_DIR, Repository

    if not (target / REPO_DIR / "config.json").is_file() or (target / REPO_DIR / CLONE_MARKER).exists():
        return None
    try:
        repo = Repository.open(target)
        if repo.root != target or repo.remotes.load().get("origin", RemoteConfig(url="")).url != url:
            return None
        head = repo.head()
        if head is None:
            return None
        manifest = repo.manifest(head)
    except EgdsError:
        return None
    partial = repo.partial_partitions(repo.cache_path)
    keys = [p.key for p in manifest.partitions if partial is None or p.key in partial]
    return CloneResult(
        directory=str(target), url=url, version=manifest.version, id=head,
        rows=sum(p.rows for p in manifest.partitions if p.key in set(keys)), partitions=keys,
        partial=partial is not None, manifests_fetched=0, objects_fetched=0, bytes_fetched=0, already_cloned=True,
    )


def _existing_store(target: Path):  # noqa: ANN202 - a LocalStore, imported lazily
    from .repo import REPO_DIR
    from .store.local import LocalStore

    return LocalStore(target / REPO_DIR)


def _create_or_reopen(target: Path, url: str, head: Manifest, created: bool, resuming: bool) -> Repository:
    """The clone's repository, with its marker written before anything else in `.egds/`."""
    from .repo import DEFAULT_CACHE, REPO_DIR, Repository

    repo_dir = target / REPO_DIR
    if not repo_dir.exists():
        # `.egds/` appears with its marker already inside: built beside it, then renamed into place.
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target, prefix=_STAGING_PREFIX, suffix=".tmp"))
        _write_json(staging / CLONE_MARKER, PendingClone(url=url, created=created))
        os.replace(staging, repo_dir)
        fsync_dir(target)
    config = Config(format=FORMAT_VERSION, cache=DEFAULT_CACHE, partitioning=head.partitioning, model=head.model)
    repo = Repository(target, config)
    repo.store.create_layout()
    if resuming:
        for leftover in repo.store.temp_files():  # of the interrupted run; this directory is the clone's own
            leftover.unlink(missing_ok=True)
    atomic_write_bytes(repo_dir / "config.json", encode_config(config))
    if "origin" not in repo.remotes.load():
        repo.remotes.add("origin", RemoteConfig(url=url))
    return repo


def _remove_clone(target: Path, created: bool) -> None:
    from .repo import DEFAULT_CACHE, REPO_DIR

    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    for name in (REPO_DIR, DEFAULT_CACHE.split("/")[0]):
        path = target / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _write_json(path: Path, value: msgspec.Struct) -> None:
    atomic_write_bytes(path, msgspec.json.encode(value) + b"\n")
