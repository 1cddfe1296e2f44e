"""Where the working cache stands in the history, and what recording it would undo.

A cache is *based on* the version it was last written as: checked out (`egds checkout`, `pull`,
`clone`) or recorded (`egds snapshot`); the cache stamp (state.json) says which. Without a stamp, a
cache whose content equals a recorded version is based on that version. The base is the latest version,
an older one (in `main`'s history), a newer one (`main` is in *its* history: a pull that checked out
before it moved `main`), or another one (outside both).

The revert rule (SPEC.md, "Snapshot"): unless the user asks for it with `--revert`, a snapshot is refused
when the cache's base is older than `main` (or outside its history) and
- the cache is still exactly the base, and recording it would put back something of the base that a later
  version replaced: a partition's content (or its absence), the index, the extras or the row order; or
- the cache changed since it was checked out as the base: whatever the later versions changed and the
  edits do not repeat would be dropped, and egds cannot tell which of their changes the edits keep (a
  partition that differs from both versions may still lack a later chunk edit), so it does not guess.
So `egds checkout v1` followed by a routine snapshot never silently records v1 as the latest, nor v1 plus
edits. A cache based on a newer version (a pull that stopped after its checkout) is never recorded:
re-running the pull finishes it. Without a stamp only a cache equal to a recorded version has a base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

from .errors import CacheAhead, WouldRevert
from .ids import short
from .model import Manifest, OrderRun

if TYPE_CHECKING:
    from .repo import Repository

LATEST = "latest"
OLDER = "older"
NEWER = "newer"
OTHER = "other"


class CacheContent(NamedTuple):
    """What a snapshot of a cache would record, as far as the revert rule compares it."""

    partitions: dict[str, str]
    """Partition key -> content hash."""
    row_order: tuple[OrderRun, ...]
    extras: str | None
    index: str | None

    @staticmethod
    def of_manifest(m: Manifest) -> CacheContent:
        return CacheContent({p.key: p.content_hash for p in m.partitions}, m.row_order, m.extras, m.index)


@dataclass(frozen=True)
class CacheBase:
    id: str
    manifest: Manifest
    exact: bool
    """True when the cache is still exactly this version (its files hash as written, or its content is equal)."""
    relation: str
    """LATEST, OLDER, NEWER or OTHER: where this version stands relative to `main`."""


def stamped_base(repo: Repository, cache: Path, digests: dict[str, str | None] | None) -> CacheBase | None:
    """The version the cache was last written as, from its stamp (None: no stamp, or its version is gone)."""
    written = repo.cache_written_as(cache)
    if written is None or digests is None:
        return None
    manifest_id, stamped_digests = written
    if not repo.has_manifest(manifest_id):
        return None  # collected by gc, or a stamp from another repository: the content decides
    return CacheBase(manifest_id, repo.manifest(manifest_id), stamped_digests == digests, relation(repo, manifest_id))


def content_base(
    repo: Repository, chain: Sequence[tuple[str, Manifest]], equal: Callable[[Manifest], bool]
) -> CacheBase | None:
    """The newest version in `main`'s history whose content the cache equals (`equal` compares)."""
    for manifest_id, manifest in chain:
        if equal(manifest):
            return CacheBase(manifest_id, manifest, True, LATEST if manifest_id == chain[0][0] else OLDER)
    return None


def relation(repo: Repository, manifest_id: str) -> str:
    head = repo.head()
    if manifest_id == head:
        return LATEST
    if head is None:
        return OTHER
    if any(i == manifest_id for i, _ in repo.history()):
        return OLDER
    # Is main an ancestor of it? Walk its parents (each manifest read once, a loop stops the walk).
    seen: set[str] = set()
    current: str | None = manifest_id
    while current is not None and current not in seen and repo.has_manifest(current):
        if current == head:
            return NEWER
        seen.add(current)
        current = repo.manifest(current).parent
    return OTHER


def undone(base: Manifest, latest: Manifest, cache: CacheContent) -> list[str]:
    """What recording `cache` would put back to `base`'s state although a later version replaced it:
    partition keys, then `index.json`, `extras`, `row order` (pure)."""
    old, new = CacheContent.of_manifest(base), CacheContent.of_manifest(latest)
    keys = sorted(
        k for k in old.partitions.keys() | new.partitions.keys()
        if old.partitions.get(k) != new.partitions.get(k) and cache.partitions.get(k) == old.partitions.get(k)
    )
    for label, was, now, mine in (
        ("index.json", old.index, new.index, cache.index),
        ("extras", old.extras, new.extras, cache.extras),
        ("row order", old.row_order, new.row_order, cache.row_order),
    ):
        if was != now and mine == was:
            keys.append(label)
    return keys


def newer_error(repo: Repository, base: CacheBase, cache: Path) -> CacheAhead:
    """Why a cache based on a version `main` has not reached is never recorded as a new version."""
    head = repo.head()
    latest = f"v{repo.manifest(head).version}" if head else "no version"
    names = sorted(repo.remote_list())
    pull = f"`egds pull {names[0]}`" if len(names) == 1 else (
        f"`egds pull NAME` (NAME: the remote you pulled from: {', '.join(names)})" if names else "the `egds pull` again"
    )
    if base.exact:
        return CacheAhead(
            f"the cache at {cache} holds v{base.manifest.version} ({short(base.id)}), which main ({latest}) has not "
            f"reached: a pull stopped after its checkout. Run {pull} to finish it; a snapshot would record "
            f"v{base.manifest.version} again as a new version"
        )
    return CacheAhead(
        f"the cache at {cache} was checked out as v{base.manifest.version} ({short(base.id)}), which main ({latest}) "
        f"has not reached (a pull stopped after its checkout), and changed since. Copy the cache elsewhere, run "
        f"`egds checkout latest --force` and then {pull}, and copy your changes back"
    )


def revert_error(base: CacheBase, latest: Manifest, undone_parts: list[str], cache: Path) -> WouldRevert:
    """Why recording the cache would undo later versions' changes (refused unless `--revert`)."""
    v = base.manifest.version
    if base.relation == OLDER:
        later = f"v{v + 1}" if v + 1 == latest.version else f"v{v + 1}..v{latest.version}"
        where = f"not the latest v{latest.version}"
        undo = f"undo the changes of {later}"
    else:
        where = f"a version outside main's history (latest is v{latest.version})"
        undo = f"replace what v{latest.version} holds"
    shown = ", ".join(undone_parts[:6]) + (f" and {len(undone_parts) - 6} more" if len(undone_parts) > 6 else "")
    if base.exact:
        return WouldRevert(
            f"the cache at {cache} holds v{v} ({short(base.id)}) unchanged, {where}: recording it would {undo} "
            f"({shown}). Run `egds checkout latest` to return to the latest version, or `egds snapshot --revert` "
            f"to record v{v}'s content as the new latest"
        )
    still = f"; it still holds v{v}'s content in {shown}" if undone_parts else ""
    return WouldRevert(
        f"the cache at {cache} was checked out as v{v} ({short(base.id)}), {where}, and changed since: recording it "
        f"would {undo} wherever the cache lacks them{still}. If the cache holds everything it should (the pipeline "
        f"rewrote it in full), run `egds snapshot --revert` to record it as it is; otherwise copy it elsewhere to "
        f"keep your changes and run `egds checkout latest --force` to return to the latest version"
    )
