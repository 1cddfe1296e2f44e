"""The records egds writes: frozen msgspec Structs with deterministic bytes.

Manifests are encoded as indented JSON (fields in definition order) so anyone can audit a
version in a browser; a manifest's id is the blake3 of exactly those bytes. New fields get
defaults, so an older reader of the same format version ignores them (msgspec's schema
evolution rules); an incompatible change bumps FORMAT_VERSION, which older readers refuse.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

import msgspec

from .errors import CorruptObject, FormatTooNew
from .ids import ObjectId

FORMAT_VERSION = 1

Partitioning = Literal["month", "quarter", "year"]
PARTITIONINGS: tuple[str, ...] = ("month", "quarter", "year")

#: The array dtypes a manifest may name: plain IEEE floats, byte order explicit (what numpy's
#: `dtype.str` gives for them). Anything else (object, unicode, structured) could make a reader
#: build something other than a float array.
FLOAT_DTYPES = ("<f2", "<f4", "<f8", ">f2", ">f4", ">f8")
#: Sanity bounds a reader checks before it allocates anything a manifest declares. Real models
#: have dimensions up to a few thousand; 2**40 rows of even one float16 is 2 TiB of array.
MAX_DIM = 1 << 16
MAX_ROWS = 1 << 40
MAX_OBJECT_BYTES = 1 << 42
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_PARTITION_KEY = {
    "month": re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])"),
    "quarter": re.compile(r"[0-9]{4}-Q[1-4]"),
    "year": re.compile(r"[0-9]{4}"),
}


class PartitionEntry(msgspec.Struct, frozen=True):
    """One time partition of a version: a Parquet object and what it holds."""

    key: str
    """Period of `newsletter_date`: `2025-10` (month), `2025-Q4` (quarter), `2025` (year)."""
    object: ObjectId
    """blake3 of the Parquet file's bytes; the file is `objects/<object[:2]>/<object>.parquet`."""
    content_hash: ObjectId
    """blake3 of the partition's logical content (SPEC.md, "Content hash"); writer-independent."""
    rows: int
    bytes: int
    """Size of the Parquet object in bytes."""
    min_chunk_id: int
    max_chunk_id: int


class OrderRun(msgspec.Struct, frozen=True, array_like=True):
    """`[partition, rows]`: the next `rows` rows of the cache come, in order, from `partitions[partition]`."""

    partition: int
    rows: int


class Manifest(msgspec.Struct, frozen=True):
    """One version of the dataset. Named by the blake3 of its encoded bytes."""

    format: int
    version: int
    """1 for the first version, parent's + 1 after."""
    parent: ObjectId | None
    created_at: datetime
    """UTC, microsecond precision."""
    message: str
    model: str
    dim: int
    dtype: str
    """numpy dtype string of the cache's array, byte order included (`<f4`)."""
    partitioning: Partitioning
    rows: int
    partitions: tuple[PartitionEntry, ...]
    """Sorted by key."""
    row_order: tuple[OrderRun, ...]
    """How to interleave the partitions' rows to rebuild the cache's row order."""
    extras: ObjectId | None
    """JSON object `objects/…/<id>.json` with the cache's top-level extras, or null when there are none."""
    index: ObjectId | None
    """The exact bytes of `index.json` as object `objects/…/<id>.json`, or null when the cache had none."""
    writer: str = ""
    """Informative only: the egds and pyarrow versions that wrote the new objects."""


class Config(msgspec.Struct, frozen=True):
    """`.egds/config.json`: settings fixed at `egds init`."""

    format: int
    cache: str
    """Cache directory, relative to the repository root unless absolute."""
    partitioning: Partitioning
    model: str


class _FormatProbe(msgspec.Struct):
    format: int


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode_manifest(data: bytes, where: str, advice: str = "run `egds verify`") -> Manifest:
    """Decode and validate a manifest; `where` names it in errors (`manifest ab12…`), `advice` says what to do.

    Beyond the types, every rule a reader relies on is checked (`manifest_problem`), so a damaged
    or hostile manifest is refused here with one line instead of crashing (or allocating) later."""
    _check_format(data, where, advice)
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise CorruptObject(f"{where} is not valid: {_one_line(exc)}; {advice}") from None
    problem = manifest_problem(manifest)
    if problem is not None:
        raise CorruptObject(f"{where} (version {manifest.version}) is not valid: {problem}; {advice}")
    return manifest


def manifest_problem(m: Manifest) -> str | None:
    """The first rule of SPEC.md §7 that `m` breaks, or None. Pure; cheap (one pass over the entries and runs)."""
    if m.format != FORMAT_VERSION:
        return f"format {m.format} is not {FORMAT_VERSION}"
    if m.version < 1 or m.version > _INT64_MAX:
        return f"version {m.version} is not a positive number"
    if (m.parent is None) != (m.version == 1):
        return f"version {m.version} {'has no' if m.parent is None else 'has a'} parent; only version 1 has none"
    offset = m.created_at.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        # A time without an offset cannot be compared with the others (`@DATE` revisions).
        return f"created_at {m.created_at.isoformat()} is not a UTC time (RFC 3339 with `Z`)"
    if m.dtype not in FLOAT_DTYPES:
        return f"dtype {_shown(m.dtype)} is not one of {', '.join(FLOAT_DTYPES)}"
    if not 1 <= m.dim <= MAX_DIM:
        return f"dim {m.dim} is outside 1..{MAX_DIM}"
    if not 0 <= m.rows <= MAX_ROWS:
        return f"rows {m.rows} is outside 0..{MAX_ROWS}"
    key_pattern = _PARTITION_KEY[m.partitioning]
    previous = None
    for entry in m.partitions:
        label = f"partition {_shown(entry.key)} (object {entry.object[:12]})"
        if not key_pattern.fullmatch(entry.key):
            return f"{label} is not a {m.partitioning} key"
        if previous is not None and entry.key <= previous:
            return f"partition keys are not unique and sorted ({_shown(previous)} before {_shown(entry.key)})"
        previous = entry.key
        if not 1 <= entry.rows <= MAX_ROWS:
            return f"{label} has {entry.rows} rows (a partition holds at least one)"
        if not 1 <= entry.bytes <= MAX_OBJECT_BYTES:
            return f"{label} has an object of {entry.bytes} bytes"
        if not _INT64_MIN <= entry.min_chunk_id <= entry.max_chunk_id <= _INT64_MAX:
            return f"{label} has chunk ids {entry.min_chunk_id}..{entry.max_chunk_id}"
    total = sum(entry.rows for entry in m.partitions)
    if total != m.rows:
        return f"partition rows add up to {total}, the manifest says {m.rows}"
    run_rows = [0] * len(m.partitions)
    for run in m.row_order:
        if not 0 <= run.partition < len(m.partitions):
            return f"row_order names partition {run.partition} of {len(m.partitions)}"
        if run.rows < 1:
            return f"row_order has a run of {run.rows} rows"
        run_rows[run.partition] += run.rows
    for entry, counted in zip(m.partitions, run_rows):
        if counted != entry.rows:
            return f"row_order gives partition {_shown(entry.key)} {counted} rows, it has {entry.rows}"
    return None


def _shown(text: str) -> str:
    """A manifest's string in a one-line message: repr (so no line breaks), cut to 40 characters."""
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:39] + "…"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def encode_config(config: Config) -> bytes:
    return msgspec.json.format(msgspec.json.encode(config), indent=2) + b"\n"


def decode_config(data: bytes, where: str) -> Config:
    _check_format(data, where)
    try:
        return msgspec.json.decode(data, type=Config)
    except msgspec.DecodeError as exc:
        raise CorruptObject(f"{where} is not a valid egds config: {exc}") from None


def _check_format(data: bytes, where: str, advice: str = "run `egds verify`") -> None:
    try:
        probe = msgspec.json.decode(data, type=_FormatProbe)
    except msgspec.DecodeError as exc:
        raise CorruptObject(f"{where} is damaged ({exc}); {advice}") from None
    if probe.format > FORMAT_VERSION:
        raise FormatTooNew(
            f"{where} uses format {probe.format}, newer than this egds understands ({FORMAT_VERSION}); "
            f"use an egds that reads format {probe.format} (upgrade it from its source)"
        )
    if probe.format < 1:
        raise CorruptObject(f"{where} has invalid format {probe.format} (formats start at 1), so no egds wrote it; {advice}")
