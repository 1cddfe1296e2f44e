"""Revision grammar and resolution (pure): which manifest a user means by `v3`, `latest~2`, `@2025-10-01`…

Grammar (SPEC.md §9), ASCII only:
    rev     := base ("~" K)*                      K = 0 | [1-9][0-9]{0,17}; the K's add up
                                                  (at most 256 characters in all)
    base    := "latest" | "v"N | N | "@"TIME | tag | id-prefix (4-64 lowercase hex)
Resolution order for a bare word: `latest`, version number, tag, then id prefix. Version numbers,
`@TIME` and `~K` walk `main`'s history only; an id prefix or a tag may name any stored manifest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from .errors import RevisionError
from .ids import is_id_prefix, short
from .model import Manifest

# Python's `\d` matches every Unicode digit (`v١` would name version 1) and str.strip() every Unicode
# space: the grammar is ASCII, so the patterns spell their characters out.
_WHITESPACE = " \t\n\r\f\v"
#: A version number or a step count: no leading zeros, at most 18 digits (int64 holds every one).
_NUMBER = re.compile(r"0|[1-9][0-9]{0,17}")
_DIGITS = re.compile(r"[0-9]+")
_V_DIGITS = re.compile(r"v([0-9]+)")
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,99}")
# `@DATE`, `@DATE[T| ]HH:MM`, `@DATE[T| ]HH:MM:SS`, each time optionally followed by `Z` (it is UTC anyway).
_DATE = re.compile(r"@([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?Z?)?")
#: Longer than any revision a person writes (an id is 64 characters); keeps messages one short line.
MAX_REVISION_CHARS = 256
_FORMS = "use latest, vN, a tag, an id prefix (>= 4 hex) or @YYYY-MM-DD, optionally followed by ~K"


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
    text = rev.strip(_WHITESPACE)
    if not text:
        raise RevisionError("empty revision; use latest, vN, a tag, an id prefix or @YYYY-MM-DD")
    if len(text) > MAX_REVISION_CHARS:
        raise RevisionError(f"revision {text[:40]!r}… is {len(text)} characters long (at most {MAX_REVISION_CHARS}); {_FORMS}")
    base, *steps = text.split("~")
    if not base or not all(_NUMBER.fullmatch(step) for step in steps):
        raise RevisionError(f"unknown revision {text!r}; {_FORMS}")
    target = _resolve_base(base, text, chain, tags, known_ids)
    if not steps:
        return target
    # `X~a~b` is `X~(a+b)`, as in git.
    return _ancestor(target, sum(int(step) for step in steps), chain, text)


def _resolve_base(
    base: str, rev: str, chain: Sequence[tuple[str, Manifest]], tags: Mapping[str, str], known_ids: Sequence[str]
) -> str:
    if base == "latest":
        if not chain:
            raise RevisionError("the repository has no versions yet; run `egds snapshot` first")
        return chain[0][0]
    if base.startswith("@"):
        return _at_time(base, chain)
    v_digits = _V_DIGITS.fullmatch(base)
    if v_digits:
        digits = v_digits.group(1)
        if len(digits) > 1 and digits[0] == "0":
            raise RevisionError(f"bad version number in {rev!r}: write it without leading zeros (v{digits.lstrip('0') or '0'})")
        found = _version(digits, chain)
        if found is None:
            raise _no_version(digits, chain)
        return found
    if _DIGITS.fullmatch(base):
        # A bare number names a version of `main`'s history; one that names none may still be an
        # id prefix ("1234…"). With a leading zero it is only ever an id prefix.
        found = _version(base, chain) if _NUMBER.fullmatch(base) else None
        if found is not None:
            return found
        if not (is_id_prefix(base) and any(i.startswith(base) for i in known_ids)):
            if _NUMBER.fullmatch(base) or len(base) > 18:
                raise _no_version(base, chain)
            raise RevisionError(
                f"unknown revision {rev!r}: version numbers have no leading zeros ({base.lstrip('0') or '0'}), "
                "and no manifest id starts with it"
            )
    if base in tags:
        return tags[base]
    if is_id_prefix(base):
        candidates = sorted(i for i in known_ids if i.startswith(base))
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            # Show each candidate up to its first distinguishing digit: for a prefix of 12 or more
            # hex digits, the usual 12-character short ids would all print the same.
            width = max(len(short(candidates[0])), len(os.path.commonprefix(candidates)) + 1)
            listed = ", ".join(c[:width] for c in candidates[:10])
            if len(candidates) > 10:
                listed += f" and {len(candidates) - 10} more"
            raise RevisionError(f"id prefix {base!r} is ambiguous: {listed}; give more characters")
    if base != base.lower() and is_id_prefix(base.lower()):
        # Ids are lowercase; an uppercase hex word may be a tag (`BEEF`), so it is never folded.
        raise RevisionError(f"unknown revision {rev!r}; id prefixes are lowercase (try {base.lower()!r}); {_FORMS}")
    raise RevisionError(f"unknown revision {rev!r}; {_FORMS}")


def _version(digits: str, chain: Sequence[tuple[str, Manifest]]) -> str | None:
    """The id of version `digits` in `chain` (main's history), or None. More than 18 digits name no version."""
    if not _NUMBER.fullmatch(digits):
        return None
    number = int(digits)
    for manifest_id, manifest in chain:
        if manifest.version == number:
            return manifest_id
    return None


def _no_version(digits: str, chain: Sequence[tuple[str, Manifest]]) -> RevisionError:
    shown = digits if len(digits) <= 24 else digits[:20] + "…"
    if not chain:  # not "versions run from 1 to 0"
        return RevisionError(f"no version {shown}: the repository has no versions yet; run `egds snapshot` first")
    return RevisionError(f"no version {shown}: versions run from 1 to {chain[0][1].version}; see `egds log`")


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
    if not _TAG.fullmatch(name) or name == "latest" or _V_DIGITS.fullmatch(name) or is_id_prefix(name):
        raise RevisionError(
            f"invalid tag name {name!r}: use a letter then letters, digits, '.', '_' or '-' "
            "(not 'latest', not vN, not a hex word that could be an id prefix)"
        )
