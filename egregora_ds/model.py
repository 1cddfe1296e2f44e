"""The records egds writes: frozen msgspec Structs with deterministic bytes.

Manifests are encoded as indented JSON (fields in definition order) so anyone can audit a
version in a browser; a manifest's id is the blake3 of exactly those bytes. New fields get
defaults, so an older reader of the same format version ignores them (msgspec's schema
evolution rules); an incompatible change bumps FORMAT_VERSION, which older readers refuse.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from .errors import CorruptObject, FormatTooNew
from .ids import ObjectId

FORMAT_VERSION = 1

Partitioning = Literal["month", "quarter", "year"]
PARTITIONINGS: tuple[str, ...] = ("month", "quarter", "year")


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
    """Decode and validate a manifest; `where` names it in errors (`manifest ab12…`), `advice` says what to do."""
    _check_format(data, where, advice)
    try:
        return msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as exc:
        raise CorruptObject(f"{where} is not valid: {exc}; {advice}") from None


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
        raise CorruptObject(f"{where} has invalid format {probe.format}")
