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
    warnings: list[str] = []
    """What went wrong after the version was recorded (the cache stamp, the config's model): nothing is lost."""


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
    holds: int | None = None
    """The recorded version the cache holds exactly (its files as egds wrote them, or equal content); None
    when it holds no recorded version (or when nothing says which)."""
    holds_id: str | None = None
    based_on: int | None = None
    """When the cache changed since egds wrote it as a version (checkout or snapshot): that version."""
    based_on_id: str | None = None
    relation: str | None = None
    """Where `holds` / `based_on` stands relative to the latest version: latest, older, newer (main has not
    reached it: a pull stopped after its checkout) or other (outside main's history); None when unknown."""
    would_undo: list[str] = []
    """What a snapshot would put back to an older version although a later one changed it: partition keys,
    `index.json`, `extras`, `row order`. Such a snapshot is refused unless `--revert`."""
    snapshot_refusal: str | None = None
    """The error `egds snapshot` would give for this cache (a revert, a newer version, an empty cache); None
    when it would record it, and for a cache other than the repository's own (snapshot never reads it)."""


class DiffPartitions(msgspec.Struct, frozen=True):
    added: list[str]
    removed: list[str]
    changed: list[str]


class DiffChunks(msgspec.Struct, frozen=True):
    added: int
    removed: int
    text_changed: int
    embedding_changed: int
    changed: int = 0
    """Chunks in both versions with any difference: a field (text, date, path, section title, counts, any
    other field of the chunk) or the vector. `text_changed` and `embedding_changed` are two of `fields`."""
    moved: int = 0
    """Changed chunks that are in another partition in the second version (their date moved them)."""
    fields: dict[str, int] = {}
    """Field name -> changed chunks: `text`, `embedding`, `newsletter_date`, `newsletter_path`,
    `section_title`, `char_count`, `chunk_index_in_newsletter`, then any other field by name (only fields
    with changes)."""


class DiffIds(msgspec.Struct, frozen=True):
    added: list[int]
    removed: list[int]
    text_changed: list[int]
    embedding_changed: list[int]
    changed: list[int] = []
    moved: list[int] = []
    fields: dict[str, list[int]] = {}
    """Field name -> the sorted ids of the chunks whose field changed (as `DiffChunks.fields`)."""


class DiffResult(msgspec.Struct, frozen=True):
    a: str
    b: str
    partitions: DiffPartitions
    chunks: DiffChunks
    ids: DiffIds | None = None
    index_changed: bool = False
    extras_changed: bool = False
    """The cache's top-level extras (keys of metadata.json and embeddings.pkl besides the chunks/array)."""
    order_changed: bool = False
    model_changed: bool = False
    """Model name, dimension or dtype."""


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


class ConfigSetting(msgspec.Struct, frozen=True):
    """One setting of `.egds/config.json` (`egds config KEY [VALUE]`)."""

    key: str
    value: str | int
    previous: str | int | None = None
    """The value before `egds config KEY VALUE` changed it (None when only read)."""
