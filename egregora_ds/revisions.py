"""Revision grammar and resolution (pure): which manifest a user means by `v3`, `latest~2`, `@2025-10-01`…

Grammar (SPEC.md, "Revisions"):
    rev     := base ("~" K)?
    base    := "latest" | "v"N | N | "@"DATE | tag | id-prefix (>= 4 hex)
Resolution order for a bare word: `latest`, version number, tag, then id prefix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from .errors import RevisionError
from .ids import is_id_prefix, short
from .model import Manifest

_VERSION = re.compile(r"v?(\d+)")
_ANCESTOR = re.compile(r"(.+?)~(\d+)")
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,99}")
_DATE = re.compile(r"@(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?Z?")


def history(head: str | None, manifests: Mapping[str, Manifest]) -> list[tuple[str, Manifest]]:
    """The chain from `head` back to the first version, newest first."""
    chain: list[tuple[str, Manifest]] = []
    seen: set[str] = set()
    current = head
    while current is not None:
        if current in seen:
            raise RevisionError(f"manifest {short(current)} appears twice in its own history; run `egds verify`")
        seen.add(current)
        manifest = manifests.get(current)
        if manifest is None:
            raise RevisionError(f"manifest {short(current)} is missing from the repository; run `egds verify`")
        chain.append((current, manifest))
        current = manifest.parent
    return chain


def resolve_version(
    rev: str,
    chain: Sequence[tuple[str, Manifest]],
    tags: Mapping[str, str],
    known_ids: Sequence[str],
) -> str:
    """Return the manifest id that `rev` names.

    `chain` is `history(head)` (newest first); `known_ids` are all manifest ids in the store, so an
    id prefix may name a manifest outside the chain.
    """
    rev = rev.strip()
    if not rev:
        raise RevisionError("empty revision; use latest, vN, a tag, an id prefix or @YYYY-MM-DD")
    match = _ANCESTOR.fullmatch(rev)
    if match:
        base_id = resolve_version(match.group(1), chain, tags, known_ids)
        return _ancestor(base_id, int(match.group(2)), chain, rev)
    if not chain and rev == "latest":
        raise RevisionError("the repository has no versions yet; run `egds snapshot` first")
    if rev == "latest":
        return chain[0][0]
    if rev.startswith("@"):
        return _at_time(rev, chain)
    match = _VERSION.fullmatch(rev)
    if match:
        number = int(match.group(1))
        for manifest_id, manifest in chain:
            if manifest.version == number:
                return manifest_id
        # A bare number may still be an id prefix ("1234…"); `vN` may not.
        if rev.startswith("v") or not is_id_prefix(rev) or not any(i.startswith(rev) for i in known_ids):
            if not chain:  # not "versions run from 1 to 0"
                raise RevisionError(f"no version {number}: the repository has no versions yet; run `egds snapshot` first")
            raise RevisionError(f"no version {number}: versions run from 1 to {chain[0][1].version}; see `egds log`")
    if rev in tags:
        return tags[rev]
    if is_id_prefix(rev):
        candidates = sorted(i for i in known_ids if i.startswith(rev))
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            # Show each candidate up to its first distinguishing digit: for a prefix of 12 or more
            # hex digits, the usual 12-character short ids would all print the same.
            width = max(len(short(candidates[0])), len(os.path.commonprefix(candidates)) + 1)
            listed = ", ".join(c[:width] for c in candidates[:10])
            if len(candidates) > 10:
                listed += f" and {len(candidates) - 10} more"
            raise RevisionError(f"id prefix {rev!r} is ambiguous: {listed}; give more characters")
    raise RevisionError(f"unknown revision {rev!r}; use latest, vN, a tag, an id prefix (>= 4 hex) or @YYYY-MM-DD")


def _ancestor(base_id: str, steps: int, chain: Sequence[tuple[str, Manifest]], rev: str) -> str:
    ids = [manifest_id for manifest_id, _ in chain]
    if base_id not in ids:
        raise RevisionError(f"{rev!r}: its base is not in the history of latest; use a version listed by `egds log`")
    position = ids.index(base_id) + steps
    if position >= len(ids):
        earlier = len(ids) - ids.index(base_id) - 1
        raise RevisionError(
            f"{rev!r} goes back past version 1 (only {earlier} earlier versions); use a smaller ~K (`egds log` lists them)"
        )
    return ids[position]


def _at_time(rev: str, chain: Sequence[tuple[str, Manifest]]) -> str:
    match = _DATE.fullmatch(rev)
    if not match:
        raise RevisionError(f"bad time in {rev!r}; use @YYYY-MM-DD or @YYYY-MM-DDTHH:MM (UTC)")
    day, hour, minute, second = match.groups()
    try:
        if hour is None:
            # A bare date means the end of that day: "the data as of 2025-10-01".
            moment = datetime.fromisoformat(day).replace(hour=23, minute=59, second=59, microsecond=999999)
        else:
            # Like a bare date, a time names the whole of its last unit: `T10:00` is up to
            # 10:00:59.999999 and `T10:00:30` up to 10:00:30.999999, so a version that `egds log`
            # shows as created at 10:00:30 (it prints whole seconds) is found by `@…T10:00:30`.
            moment = datetime.fromisoformat(f"{day}T{hour}:{minute}:{second or '59'}").replace(microsecond=999999)
    except ValueError:
        raise RevisionError(f"bad time in {rev!r}; use @YYYY-MM-DD or @YYYY-MM-DDTHH:MM (UTC)") from None
    moment = moment.replace(tzinfo=timezone.utc)
    for manifest_id, manifest in chain:
        if manifest.created_at <= moment:
            return manifest_id
    if not chain:
        raise RevisionError("the repository has no versions yet; run `egds snapshot` first")
    first = chain[-1][1].created_at.isoformat()
    raise RevisionError(
        f"no version existed at {rev[1:]} (UTC); the first was created {first}: use a later time (`egds log` lists them)"
    )


def check_tag_name(name: str) -> None:
    """Tags must not shadow the other forms of a revision."""
    if not _TAG.fullmatch(name) or name == "latest" or _VERSION.fullmatch(name) or is_id_prefix(name):
        raise RevisionError(
            f"invalid tag name {name!r}: use a letter then letters, digits, '.', '_' or '-' "
            "(not 'latest', not vN, not a hex word that could be an id prefix)"
        )
