"""The errors a user can cause. Each message says what failed, where, and what to do next.

The CLI and the MCP server print `str(error)` as one line; `exit_code` is the process status.
"""

from __future__ import annotations

import errno


class EgdsError(Exception):
    """Base class: a failure the user can understand and act on (never a bug)."""

    exit_code = 1


class UsageError(EgdsError):
    """Bad arguments or a command that does not apply in this state."""

    exit_code = 2


class NotARepository(EgdsError):
    pass


class RepositoryExists(EgdsError):
    pass


class FormatTooNew(EgdsError):
    """The repository or a manifest was written by a newer egds."""


class CacheError(EgdsError):
    """The pickle cache is missing, malformed or unsafe."""


class UnsafePickle(CacheError):
    """The pickle would import something other than what a numpy array needs."""


class ModelChanged(EgdsError):
    """Dimension or model differs from the parent version."""


class NonFiniteEmbeddings(CacheError):
    pass


class RevisionError(EgdsError):
    """A revision that cannot be resolved (unknown, ambiguous, out of range)."""


class CorruptObject(EgdsError):
    """Bytes whose hash does not match their name, or a manifest/ref that does not decode."""


class MissingObject(EgdsError):
    pass


class LockHeld(EgdsError):
    """Another egds process holds the repository's write lock."""


class UnsavedWork(EgdsError):
    """Checkout would overwrite a cache that matches no recorded version."""


def describe_os_error(exc: OSError) -> str:
    """One line for a failure of the machine rather than of egds (a full disk, a read-only path)."""
    what = exc.strerror or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space and run the command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "check that this user can write there (and that the disk is not read-only)"
    else:
        advice = "check the disk and the path, then run the command again"
    return (
        f"{what}{where}; {advice}. Writes are atomic and ordered, so nothing is half-written "
        "(`egds verify` checks the repository)"
    )


class WouldRevert(UsageError):
    """A snapshot would record an older version's content as the latest, undoing later versions."""


class CacheAhead(UsageError):
    """The cache holds a version that `main` has not reached yet (a pull stopped after its checkout)."""


class EmptyCache(UsageError):
    """The cache holds no chunks; recording it would make the latest version empty."""
