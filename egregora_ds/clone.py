"""`egds pull` and `egds clone` (SPEC.md §14.3): fetch verified manifests and objects, then check out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from .card import REF_KEY
from .errors import EgdsError, UsageError
from .model import Manifest
from .checkout import select_partitions
from .progress import NO_PROGRESS, Progress
from .remotes import HoldingsRecord, RemoteConfig, open_remote
from .transfer import (
    download_manifests,
    fetch_objects,
    manifest_object_keys,
    object_size_bounds,
    read_remote_ref,
    store_manifests,
)

if TYPE_CHECKING:
    from .repo import Repository


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
        downloaded = download_manifests(remote, remote_ref, repo.has_manifest)
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
        objects, nbytes = fetch_objects(
            repo, remote, manifest_object_keys(target, partial), record, progress, object_size_bounds([target])
        )
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
    # The whole chain, verified, before anything is created: a damaged remote leaves no directory.
    downloaded = download_manifests(remote, remote_ref, lambda _: False)
    head = downloaded[0][2]
    created = not target.exists()
    try:
        repo = Repository.init(target, partitioning=head.partitioning, model=head.model)
        repo.remotes.add("origin", RemoteConfig(url=url))
        record = HoldingsRecord(repo.remotes.record_dir / "origin.known")
        manifests = store_manifests(repo, downloaded, record)
        repo.store.write_ref("main", remote_ref)
        repo.store.write_ref("remotes/origin/main", remote_ref)
        manifest_id, manifest = repo.resolve(rev)
        keys = select_partitions(manifest, partitions)
        wanted = set(keys) if partitions is not None else None
        objects, nbytes = fetch_objects(
            repo, remote, manifest_object_keys(manifest, wanted), record, progress, object_size_bounds([manifest])
        )
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

