"""The errors a user can cause. Each message says what failed, where, and what to do next.

The CLI and the MCP server print `str(error)` as one line; `exit_code` is the process status.
"""

from __future__ import annotations


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
