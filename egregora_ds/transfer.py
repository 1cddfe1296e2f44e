"""Moving hash-named files between a repository and a remote: the shared pieces and fetching.

Every downloaded manifest and object is re-hashed against its name before it is stored; `push.py`
uploads, `clone.py` builds pull and clone on top of these.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .atomic import fsync_dir
from .card import REF_KEY, manifest_key, object_key
from .errors import CorruptObject, EgdsError, MissingObject
from .ids import JSON, PARQUET, hash_bytes, is_object_id, short
from .model import Manifest, decode_manifest
from .progress import NO_PROGRESS, Progress
from .remotes import HoldingsRecord, open_remote
from .store.base import Remote, RemoteError, RemoteFile

if TYPE_CHECKING:
    from .repo import Repository
    from .store.local import LocalStore

T = TypeVar("T")
R = TypeVar("R")
DOWNLOAD_THREADS = 4
DOWNLOAD_ATTEMPTS = 3
#: Upper bounds on what a read from a remote may return, so a hostile remote cannot exhaust memory.
#: A Parquet object's size is in its manifest entry; the others have none recorded, hence caps.
MAX_REF_BYTES = 128
MAX_MANIFEST_BYTES = 256 << 20
MAX_JSON_OBJECT_BYTES = 1 << 30
#: Walking a remote's manifest chain (SPEC.md §14.3): manifests are fetched this many at a time,
#: on this many threads; only listed manifests up to PREFETCH_MAX_BYTES are fetched ahead of the walk.
MANIFEST_BATCH = 256
MANIFEST_THREADS = 8
PREFETCH_MAX_BYTES = 1 << 20
#: Steps of a chain walk taken one by one before the listing is read (most pulls need one or two).
WALK_ALONE = 32
#: How many more versions than the remote lists manifests a head may claim: archive.org lists a
#: fresh upload only minutes later, so a just-pushed chain can be ahead of the listing.
LISTING_LAG_ALLOWANCE = 1024
MANIFESTS_PREFIX = "egds/manifests/"
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


def object_size_bounds(manifests: list[Manifest]) -> dict[str, int]:
    """The most bytes a download of each object named by `manifests` may return."""
    return {p.object: p.bytes for m in manifests for p in m.partitions}


def manifest_object_keys(manifest: Manifest, partitions: set[str] | None = None) -> list[tuple[str, str]]:
    """(object id, suffix) of everything a version needs, optionally only some partitions."""
    needed = [(p.object, PARQUET) for p in manifest.partitions if partitions is None or p.key in partitions]
    needed += [(i, JSON) for i in (manifest.extras, manifest.index) if i is not None]
    return needed


def read_remote_ref(remote: Remote) -> str | None:
    return read_remote_ref_bytes(remote)[0]


def read_remote_ref_bytes(remote: Remote) -> tuple[str | None, bytes | None]:
    """(manifest id, the ref's exact bytes) — the bytes are what a compare-and-swap compares."""
    # A ref has no hash to check, but a body damaged in transit (one flipped byte from a bad proxy)
    # is not a manifest id: read it again, as for objects, before calling the remote damaged.
    for _ in range(DOWNLOAD_ATTEMPTS):
        data = remote.get(REF_KEY, MAX_REF_BYTES)
        if data is None:
            return None, None
        text = data.decode("ascii", errors="replace").strip()
        if is_object_id(text):
            return text, data
    raise RemoteError(f"{remote.url}: {REF_KEY} is not a manifest id; {DAMAGED_REMOTE}")


def get_verified(remote: Remote, key: str, expected: str, damaged: str, max_bytes: int) -> bytes | None:
    """The bytes under `key` that hash to `expected`, or None when the remote lacks `key`.

    A body that fails the hash is fetched again, up to DOWNLOAD_ATTEMPTS times, before `damaged` is
    raised as CorruptObject: damage in transit is transient; only repeated damage is the remote's.
    Manifests get the same retries as objects (they used to fail a whole clone on one bad transfer)."""
    for _ in range(DOWNLOAD_ATTEMPTS):
        data = remote.get(key, max_bytes)
        if data is None:
            return None
        if hash_bytes(data) == expected:
            return data
    raise CorruptObject(damaged)


def listed_manifests(inventory: Mapping[str, RemoteFile]) -> dict[str, int]:
    """Manifest id -> listed size, for every well-named manifest key of a remote's inventory."""
    listed = {}
    for key, info in inventory.items():
        if key.startswith(MANIFESTS_PREFIX):
            name = key[len(MANIFESTS_PREFIX):]
            if name.endswith(".json") and is_object_id(name[:-5]):
                listed[name[:-5]] = info.size
    return listed


class _ManifestSource:
    """Where a chain walk gets a manifest's verified bytes: a copy already stored locally (an
    interrupted pull or clone is not downloaded again), a batch prefetched in parallel, or one download."""

    def __init__(self, remote: Remote, local: LocalStore | None) -> None:
        self.remote = remote
        self.local = local
        self.prefetched: dict[str, bytes | None | EgdsError] = {}
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def stored_locally(self, manifest_id: str) -> bool:
        return self.local is not None and self.local.manifest_path(manifest_id).is_file()

    def get(self, manifest_id: str) -> bytes:
        if self.stored_locally(manifest_id):
            try:
                return self.local.read_manifest_bytes(manifest_id)  # type: ignore[union-attr]
            except EgdsError:
                pass  # a damaged local copy: download it again
        found = self.prefetched.pop(manifest_id) if manifest_id in self.prefetched else self._download(manifest_id)
        if isinstance(found, EgdsError):
            raise found
        if found is None:
            raise MissingObject(f"{self.remote.url} lacks manifest {short(manifest_id)}; {INCOMPLETE_REMOTE}")
        return found

    def prefetch(self, ids: list[str]) -> None:
        """Download `ids` side by side; each result (bytes, None or the error) waits for the walk,
        so a damaged manifest the chain does not reach never fails it."""
        if self._pool is None:  # one pool for the whole walk: no thread start-up per batch
            self._pool = ThreadPoolExecutor(max_workers=MANIFEST_THREADS)
        # One task per slice, not per manifest: a local disk answers faster than a future is made.
        slices = [ids[i::MANIFEST_THREADS] for i in range(MANIFEST_THREADS)]
        for part, results in zip(slices, self._pool.map(lambda part: [self._download(i) for i in part], slices)):
            self.prefetched.update(zip(part, results))

    def _download(self, manifest_id: str) -> bytes | None | EgdsError:
        try:
            return get_verified(
                self.remote, manifest_key(manifest_id), manifest_id,
                f"manifest {short(manifest_id)} from {self.remote.url} failed its hash check {DOWNLOAD_ATTEMPTS} times; "
                f"{DAMAGED_REMOTE}",
                MAX_MANIFEST_BYTES,
            )
        except EgdsError as exc:
            return exc


def download_manifests(
    remote: Remote,
    head: str,
    have: Callable[[str], bool],
    *,
    known_version: Callable[[str], int] | None = None,
    local: LocalStore | None = None,
    inventory: Mapping[str, RemoteFile] | None = None,
    progress: Progress = NO_PROGRESS,
) -> list[tuple[str, bytes, Manifest]]:
    """Download, verify and check every manifest from `head` back to one `have` says we hold (or to
    version 1); write nothing. Newest first: callers decide (e.g. after a divergence check) whether
    to store them.

    The walk is bounded (SPEC.md §14.3): every manifest must be its child's version minus one, only
    version 1 may lack a parent, so it ends after at most the head's version steps and cannot loop;
    and a head claiming more versions than the remote lists manifests (plus LISTING_LAG_ALLOWANCE,
    for archive.org's listing lag) is refused before anything else is downloaded. Listed manifests
    are fetched MANIFEST_BATCH at a time, MANIFEST_THREADS in parallel, not one round trip per version.

    `known_version(id)`: the version of a manifest `have` holds (it must be its child's minus one).
    `local`: a store whose verified copies are used instead of downloads. `inventory`: the remote's
    listing, if the caller has it (else one request reads it)."""
    fetched = list(walk_manifests(remote, head, have, local=local, inventory=inventory, progress=progress))
    if not fetched:
        return fetched
    child_id, _, child = fetched[-1]
    stop = child.parent
    if stop is not None and known_version is not None and known_version(stop) != child.version - 1:
        raise CorruptObject(
            f"{remote.url}: manifest {short(child_id)} (version {child.version}) names parent {short(stop)}, which is "
            f"version {known_version(stop)} here; versions must count down by one; {DAMAGED_REMOTE}"
        )
    return fetched


def walk_manifests(
    remote: Remote,
    head: str,
    have: Callable[[str], bool],
    *,
    local: LocalStore | None = None,
    inventory: Mapping[str, RemoteFile] | None = None,
    progress: Progress = NO_PROGRESS,
) -> Iterator[tuple[str, bytes, Manifest]]:
    """`download_manifests` one manifest at a time (verify keeps what it got before a failure).

    The first WALK_ALONE steps go one by one (a short pull or clone needs no listing); a longer walk
    reads the listing once, refuses a head that claims more versions than it can hold, and fetches
    the rest in parallel batches."""
    if have(head):
        return
    source = _ManifestSource(remote, local)
    data = source.get(head)
    manifest = _check_remote_manifest(remote, head, data, None)
    claimed = manifest.version
    listing: dict[str, int] | None = None
    pending: Iterator[str] = iter(())
    progress.begin(f"fetching manifests from {remote.url}", manifest.version, unit="manifests")
    try:
        current, steps = head, 0
        walked: set[str] = set()
        while True:
            walked.add(current)
            yield current, data, manifest
            progress.advance()
            child = (current, manifest)
            parent = manifest.parent
            if parent is None or have(parent):
                return
            current, steps = parent, steps + 1
            if listing is None and (steps >= WALK_ALONE or inventory is not None):
                listing = listed_manifests(remote.inventory() if inventory is None else inventory)
                if claimed > len(listing) + LISTING_LAG_ALLOWANCE:
                    raise CorruptObject(
                        f"{remote.url}: manifest {short(head)} claims version {claimed:,}, but the remote lists only "
                        f"{len(listing):,} manifests, so that history cannot be there; {DAMAGED_REMOTE}"
                    )
                # A huge listed file is fetched only if the walk reaches it, so a batch stays small.
                pending = iter(sorted(i for i, size in listing.items() if 0 <= size <= PREFETCH_MAX_BYTES))
            if listing is not None and current in listing and current not in source.prefetched \
                    and not source.stored_locally(current):
                batch = [current]
                for candidate in pending:
                    if candidate != current and candidate not in walked and candidate not in source.prefetched \
                            and not have(candidate) and not source.stored_locally(candidate):
                        batch.append(candidate)
                        if len(batch) == MANIFEST_BATCH:
                            break
                source.prefetch(batch)
            data = source.get(current)
            manifest = _check_remote_manifest(remote, current, data, child)
    finally:
        source.close()
        progress.end()


def _check_remote_manifest(remote: Remote, manifest_id: str, data: bytes, child: tuple[str, Manifest] | None) -> Manifest:
    """Decode a downloaded manifest and check its place in the chain below `child` (None: the head)."""
    label = f"manifest {short(manifest_id)} from {remote.url}"
    manifest = decode_manifest(data, label, DAMAGED_REMOTE)
    problem = None
    if manifest.version < 1:
        problem = f"has version {manifest.version}; versions start at 1"
    elif manifest.parent == manifest_id:
        problem = "names itself as its parent"
    elif (manifest.parent is None) != (manifest.version == 1):
        problem = "is version 1 but names a parent" if manifest.version == 1 else f"is version {manifest.version} but names no parent"
    elif child is not None and manifest.version != child[1].version - 1:
        problem = (
            f"is version {manifest.version}, but version {child[1].version} ({short(child[0])}) names it as its parent; "
            "versions must count down by one"
        )
    if problem is not None:
        raise CorruptObject(f"{label} {problem}; {DAMAGED_REMOTE}")
    return manifest


def store_manifests(repo: Repository, fetched: list[tuple[str, bytes, Manifest]], record: HoldingsRecord | None) -> int:
    """Store downloaded manifests, oldest first.

    A remote receives a manifest only after all its objects (SPEC.md, push order), so the record
    notes those objects as held by the remote: a partial clone knows where the rest lives. The
    record is written first (one fsync for the lot): a manifest stored without it would make
    `verify` call its objects missing instead of unfetched."""
    if record is not None:
        keys = [manifest_key(i) for i, _, _ in fetched]
        keys += sorted({object_key(i, s) for _, _, m in fetched for i, s in manifest_object_keys(m)})
        record.add_many(keys)
    if len(fetched) <= MANIFEST_BATCH:
        new = [(i, data) for i, data, _ in reversed(fetched) if not repo.has_manifest(i)]
    else:  # one listing, not a stat per manifest
        stored = set(os.listdir(repo.store.manifests_dir)) if repo.store.manifests_dir.is_dir() else set()
        new = [(i, data) for i, data, _ in reversed(fetched) if f"{i}.json" not in stored]
    if len(new) <= MANIFEST_BATCH:
        for _, data in new:  # oldest first
            repo.store.put_manifest(data)
    else:
        _put_many_manifests(repo.store, new)
    # Already verified and decoded: the checkout that follows need not read them all back.
    repo.remember_manifests((i, m) for i, _, m in fetched)
    return len(fetched)


def _put_many_manifests(store: LocalStore, manifests: list[tuple[str, bytes]]) -> None:
    """Store a long chain's manifests with one flush instead of two fsyncs each (100,000 of those
    took minutes): every one is written to a temp name, the file system is flushed once (syncfs),
    then each is renamed into place and the directory is fsynced. A crash before the flush leaves
    only temp files (`gc` removes them); after it, every renamed manifest holds its whole bytes.
    Nothing names them yet: refs move after this returns. A kill may store a manifest without its
    parent, which nothing relies on (chain walks stop at manifests in main's history, or use local
    copies by id)."""
    directory = store.manifests_dir
    directory.mkdir(parents=True, exist_ok=True)
    base = str(directory)
    temps: list[tuple[str, str]] = []  # plain strings: pathlib would cost more than the writes
    try:
        for manifest_id, data in manifests:
            name = f"{manifest_id}.json"
            temp = os.path.join(base, f".{name}.{os.urandom(4).hex()}.tmp")
            temps.append((temp, os.path.join(base, name)))
            with open(temp, "wb") as out:
                out.write(data)
        if not _syncfs(directory):
            for temp, _ in temps:
                with open(temp, "rb+") as handle:
                    os.fsync(handle.fileno())
        for temp, final in temps:
            os.replace(temp, final)
        fsync_dir(directory)
    except BaseException:
        for temp, _ in temps:
            Path(temp).unlink(missing_ok=True)
        raise


def _syncfs(directory: Path) -> bool:
    """Flush the file system holding `directory` (Linux syncfs(2)); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(directory))
    finally:
        os.close(fd)
    return True


def object_labels(manifest: Manifest) -> dict[str, str]:
    """Object id -> what it is in `manifest` (`partition 2024-01 of version 3`), for messages."""
    labels = {p.object: f"partition {p.key} of version {manifest.version}" for p in manifest.partitions}
    for object_id, what in ((manifest.extras, "extras"), (manifest.index, "index")):
        if object_id is not None:
            labels[object_id] = f"{what} of version {manifest.version}"
    return labels


def fetch_objects(
    repo: Repository,
    remote: Remote,
    needed: list[tuple[str, str]],
    record: HoldingsRecord | None,
    progress: Progress,
    sizes: dict[str, int],
    labels: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """Download the objects not yet stored locally; every byte re-hashed, retried, then refused.
    `sizes` bounds each Parquet object's download (its manifest entry's `bytes`); `labels` says what
    each object is (`object_labels`), so an error names the remote, the version and the object."""
    missing = sorted({(i, s) for i, s in needed if not repo.store.has_object(i, s)})

    def download(item: tuple[str, str]) -> int:
        object_id, suffix = item
        key = object_key(object_id, suffix)
        label = labels.get(object_id) if labels else None
        what = f"object {short(object_id)}{suffix}" + (f" ({label})" if label else "")
        expected = sizes.get(object_id) if suffix == PARQUET else None
        try:
            data = get_verified(
                remote, key, object_id,
                f"{remote.url}: {what} failed its hash check {DOWNLOAD_ATTEMPTS} times, so nothing was written; "
                "try again later, or report the damaged remote to its owner",
                expected if expected is not None else MAX_JSON_OBJECT_BYTES,
            )
        except RemoteError as exc:
            raise type(exc)(f"{label}: {exc}" if label else str(exc)) from None
        if data is None:
            raise MissingObject(f"{remote.url} lacks {what}; {INCOMPLETE_REMOTE}")
        if expected is not None and len(data) != expected:
            # The bytes are authentic (they hash to their name); the manifest entry that sized them is not.
            raise CorruptObject(
                f"{remote.url}: {what} is {len(data):,} bytes, but the manifest entry naming it says {expected:,}; "
                f"{DAMAGED_REMOTE}"
            )
        repo.store.put_object_bytes(data, suffix, verified_id=object_id)
        if record is not None:
            record.add(key)
        progress.advance(len(data))
        return len(data)

    progress.begin(f"fetching objects from {remote.url}", sum(sizes.get(i, 0) for i, _ in missing) or None, unit="bytes")
    try:
        fetched = run_bounded(download, missing, DOWNLOAD_THREADS)
    finally:
        progress.end()
    return len(fetched), sum(fetched)


def fetch_for_checkout(repo: Repository, needed: list[tuple[str, str]], progress: Progress, sizes: dict[str, int]) -> None:
    """Fetch objects a checkout needs that are not stored locally, from the first remote that has them."""
    missing = [(i, s) for i, s in needed if not repo.store.has_object(i, s)]
    if not missing:
        return
    remotes = repo.remotes.load()
    names = sorted(remotes, key=lambda n: (n != "origin", n))
    if not names:
        raise MissingObject(
            f"{len(missing)} objects of this version are not stored locally (first: {short(missing[0][0])}) "
            "and no remote is configured to fetch them from; add a remote that has them (`egds remote add origin URL`) "
            "and run the command again, or run `egds verify` to list what is missing"
        )
    last_error: EgdsError | None = None
    for name in names:
        try:
            record = HoldingsRecord(repo.remotes.record_dir / f"{name}.known")
            fetch_objects(repo, open_remote(remotes[name].url), missing, record, progress, sizes)
            return
        except EgdsError as exc:
            last_error = exc
    assert last_error is not None
    raise last_error
