"""Typed results of the API calls. The CLI's and the MCP server's `--json` are these, encoded."""

from __future__ import annotations

from datetime import datetime

import msgspec


class PartitionCounts(msgspec.Struct, frozen=True):
    written: int
    reused: int


class SnapshotResult(msgspec.Struct, frozen=True):
    version: int | None
    """The version now latest (None: the repository is still empty)."""
    id: str | None
    created: bool
    """False when the cache equals the latest version (no new version was recorded)."""
    rows: int
    partitions: PartitionCounts
    bytes_written: int
    message: str


class LogEntry(msgspec.Struct, frozen=True):
    version: int
    id: str
    parent: str | None
    created_at: datetime
    message: str
    rows: int
    partitions: int
    model: str
    dim: int
    tags: list[str] = []


class TagResult(msgspec.Struct, frozen=True):
    tag: str
    version: int
    id: str


class CheckoutResult(msgspec.Struct, frozen=True):
    version: int
    id: str
    cache: str
    rows: int
    partitions: int
    bytes_read: int
    already_current: bool = False
    partial: bool = False
    """True when only some partitions were checked out (`partitions` of them)."""


class PartitionStatus(msgspec.Struct, frozen=True):
    unchanged: list[str]
    changed: list[str]
    added: list[str]
    removed: list[str]


class StatusResult(msgspec.Struct, frozen=True):
    version: int | None
    id: str | None
    cache: str
    clean: bool
    """True when the cache equals the latest version exactly."""
    rows: int
    partitions: PartitionStatus
    index_changed: bool
    extras_changed: bool
    order_changed: bool
    model_changed: bool
    partial: list[str] | None = None
    """Partitions the cache holds when it is a partial checkout (a partial clone); None for a full cache."""


class DiffPartitions(msgspec.Struct, frozen=True):
    added: list[str]
    removed: list[str]
    changed: list[str]


class DiffChunks(msgspec.Struct, frozen=True):
    added: int
    removed: int
    text_changed: int
    embedding_changed: int


class DiffIds(msgspec.Struct, frozen=True):
    added: list[int]
    removed: list[int]
    text_changed: list[int]
    embedding_changed: list[int]


class DiffResult(msgspec.Struct, frozen=True):
    a: str
    b: str
    partitions: DiffPartitions
    chunks: DiffChunks
    ids: DiffIds | None = None


class VerifyReport(msgspec.Struct, frozen=True):
    ok: bool
    objects: int
    manifests: int
    bytes: int
    problems: list[str]
    notes: list[str]
    remote: str | None = None
    """`verify --remote NAME`: the remote checked (None: the local repository)."""
    url: str | None = None
    version: int | None = None
    """`verify --remote`: the version the remote's ref names (None if it names none)."""


class GcResult(msgspec.Struct, frozen=True):
    dry_run: bool
    objects: list[str]
    manifests: list[str]
    temp_files: list[str]
    bytes_freed: int
