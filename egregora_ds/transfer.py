"""Moving hash-named files between a repository and a remote: the shared pieces and fetching.

Every downloaded manifest and object is re-hashed against its name before it is stored; `push.py`
uploads, `clone.py` builds pull and clone on top of these.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, TypeVar

from .card import REF_KEY, manifest_key, object_key
from .errors import CorruptObject, EgdsError, MissingObject
from .ids import JSON, PARQUET, hash_bytes, is_object_id, short
from .model import Manifest, decode_manifest
from .progress import Progress
from .remotes import HoldingsRecord, open_remote
from .store.base import Remote, RemoteError

if TYPE_CHECKING:
    from .repo import Repository

T = TypeVar("T")
R = TypeVar("R")
DOWNLOAD_THREADS = 4
DOWNLOAD_ATTEMPTS = 3
#: Upper bounds on what a read from a remote may return, so a hostile remote cannot exhaust memory.
#: A Parquet object's size is in its manifest entry; the others have none recorded, hence caps.
MAX_REF_BYTES = 128
MAX_MANIFEST_BYTES = 256 << 20
MAX_JSON_OBJECT_BYTES = 1 << 30
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


def download_manifests(remote: Remote, head: str, have: Callable[[str], bool]) -> list[tuple[str, bytes, Manifest]]:
    """Download and verify every manifest from `head` back to one `have` says we hold; write nothing.

    Newest first. Callers decide (e.g. after a divergence check) whether to store them."""
    fetched: list[tuple[str, bytes, Manifest]] = []
    seen: set[str] = set()
    current: str | None = head
    while current is not None and current not in seen and not have(current):
        seen.add(current)
        data = get_verified(
            remote, manifest_key(current), current,
            f"manifest {short(current)} from {remote.url} failed its hash check {DOWNLOAD_ATTEMPTS} times; {DAMAGED_REMOTE}",
            MAX_MANIFEST_BYTES,
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
    return store_manifests(repo, download_manifests(remote, head, repo.has_manifest), record)


def fetch_objects(
    repo: Repository,
    remote: Remote,
    needed: list[tuple[str, str]],
    record: HoldingsRecord | None,
    progress: Progress,
    sizes: dict[str, int],
) -> tuple[int, int]:
    """Download the objects not yet stored locally; every byte re-hashed, retried, then refused.
    `sizes` bounds each Parquet object's download (its manifest entry's `bytes`)."""
    missing = sorted({(i, s) for i, s in needed if not repo.store.has_object(i, s)})

    def download(item: tuple[str, str]) -> int:
        object_id, suffix = item
        key = object_key(object_id, suffix)
        data = get_verified(
            remote, key, object_id,
            f"object {short(object_id)}{suffix} from {remote.url} failed its hash check {DOWNLOAD_ATTEMPTS} times; "
            "nothing was written; try again later or report the damaged remote",
            sizes.get(object_id, MAX_JSON_OBJECT_BYTES) if suffix == PARQUET else MAX_JSON_OBJECT_BYTES,
        )
        if data is None:
            raise MissingObject(f"{remote.url} lacks object {short(object_id)}{suffix}; {INCOMPLETE_REMOTE}")
        repo.store.put_object_bytes(data, suffix, verified_id=object_id)
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
            "and no remote is configured to fetch them from; run `egds verify`"
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
