"""Parquet bytes of a partition: the writer settings (SPEC.md, "Parquet files") and the reader."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import CorruptObject
from .ids import short
from .table import CHUNK_ID, DATE, EMBEDDING, EXTRA, TYPED_FIELDS

if TYPE_CHECKING:
    from .model import Manifest, PartitionEntry

ROW_GROUP_ROWS = 32768
#: Chosen by measurement (benchmarks/, notes/parquet-performance.md): zstd-1 with byte-stream-split
#: on the vectors is as fast as plain zstd-1 and 15% smaller on them; zstd-9 is ~3x slower for 2%.
WRITER_OPTIONS = dict(
    compression="zstd",
    compression_level=1,
    # Dictionary encoding only for low-cardinality columns: left on for the vectors it would
    # also silently disable byte-stream-split.
    use_dictionary=["newsletter_date", "newsletter_path", "section_title"],
    use_byte_stream_split=[f"{EMBEDDING}.list.element"],
    row_group_size=ROW_GROUP_ROWS,
    write_statistics=True,
    store_schema=True,
)


def encode_partition(table: pa.Table, key: str, content_hash: str) -> pa.Buffer:
    """One partition's Parquet bytes, in memory (hashed and written without reading them back).
    Same table + same pyarrow version -> same bytes."""
    metadata = {b"egds.partition": key.encode(), b"egds.content_hash": content_hash.encode()}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), sink, **WRITER_OPTIONS)
    return sink.getvalue()


def write_partition(table: pa.Table, path: Path, key: str, content_hash: str) -> None:
    """`encode_partition` to a file (tests build damaged repositories with it)."""
    path.write_bytes(encode_partition(table, key, content_hash))


#: The columns a partition may have, in this order (SPEC.md §5.1), and their Arrow types; the
#: embedding column's type depends on the manifest. Strings may be `large_string` (any writer).
_STRING_TYPES = (pa.string(), pa.large_string())
_COLUMN_TYPES: dict[str, tuple[pa.DataType, ...]] = {
    CHUNK_ID: (pa.int64(),),
    DATE: (pa.date32(),),
    **{name: (_STRING_TYPES if kind is str else (pa.int64(),)) for name, (_, kind) in TYPED_FIELDS.items()},
    EXTRA: _STRING_TYPES,
}
_COLUMN_ORDER = [*_COLUMN_TYPES, EMBEDDING]
_FLOAT_TYPES = {2: pa.float16(), 4: pa.float32(), 8: pa.float64()}
_FIXED_WIDTH = {CHUNK_ID: 8, DATE: 4, "char_count": 8, "chunk_index_in_newsletter": 8}
#: Footer bounds (before anything is decoded). A fixed-width column needs rows x width bytes
#: (plus levels and page headers); twice that and 1 MiB covers every encoding. String columns
#: are bounded by the object's size: zstd-1 shrinks text about 3-6 fold, so 64 x the object's
#: bytes is far above any real text and far below what a decompression bomb needs.
_SLACK_BYTES = 1 << 20
#: Dates a reader accepts, in days since 1970-01-01: years 0 to 9999. Snapshots write years 1 to
#: 9999 (`table._date_column`); year 0 is read because earlier egds recorded it when every date of a
#: cache was canonical.
_YEAR_0_DAY = -719528
_LAST_DAY = 2932896
_TEXT_EXPANSION = 64


def check_stored_footer(path: Path, entry: PartitionEntry, manifest: Manifest) -> None:
    """Refuse a stored object whose footer disagrees with the manifest, before a reader allocates
    what the manifest declares (a `rows` of 10**10 must not reserve an array of that size). A
    footer that does not parse is left to `read_partition`, after the object's hash is checked,
    which names the damage better."""
    try:
        parquet = pq.ParquetFile(path)
        problem = footer_problem(parquet.metadata, parquet.schema_arrow, entry, manifest, path.stat().st_size)
    except (pa.ArrowException, OSError, ValueError, MemoryError):
        return
    if problem is not None:
        raise _damaged(entry, manifest, problem)


def read_partition(data: bytes | pa.Buffer, entry: PartitionEntry, manifest: Manifest) -> pa.Table:
    """Parse verified bytes (never re-read the file: what was hashed is what is parsed) of the
    partition `entry` of `manifest`: the footer is checked against the manifest before anything
    is decoded (`footer_problem`), the decoded table's schema after. Every failure is one
    CorruptObject naming the object, the partition and the version."""
    try:
        # ParquetFile, not read_table: the latter loads pyarrow.dataset, which imports pandas.
        parquet = pq.ParquetFile(pa.BufferReader(data))
        problem = footer_problem(parquet.metadata, parquet.schema_arrow, entry, manifest, len(data))
        if problem is None:
            table = parquet.read()
            problem = schema_problem(table.schema, manifest) or decoded_problem(table, entry, manifest)
    except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
        problem = f"does not decode ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
    if problem is not None:
        raise _damaged(entry, manifest, problem)
    return table


def _damaged(entry: PartitionEntry, manifest: Manifest, problem: str) -> CorruptObject:
    return CorruptObject(
        f"object {short(entry.object)}.parquet (partition {entry.key} of version {manifest.version}) {problem}; "
        "nothing was written. The object or its manifest is damaged: restore them from a remote or another copy "
        "(`egds verify --deep` lists damage)"
    )


def footer_problem(
    metadata: pq.FileMetaData, schema: pa.Schema, entry: PartitionEntry, manifest: Manifest, size: int
) -> str | None:
    """What in a Parquet footer disagrees with the manifest's entry, or None (pure; SPEC.md §5.3)."""
    if metadata.num_rows != entry.rows:
        return f"declares {metadata.num_rows} rows, the manifest {entry.rows}"
    problem = schema_problem(schema, manifest)
    if problem is not None:
        return problem
    if metadata.num_columns != len(schema):
        return f"has {metadata.num_columns} leaf columns for {len(schema)} fields"
    widths = [_FIXED_WIDTH.get(name) for name in schema.names]
    widths[-1] = manifest.dim * np.dtype(manifest.dtype).itemsize
    counted_rows, text_bytes = 0, 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        counted_rows += group.num_rows
        for c, width in enumerate(widths):
            column = group.column(c)
            values_per_row = manifest.dim if c == len(widths) - 1 else 1
            if column.num_values > group.num_rows * values_per_row:
                return f"declares {column.num_values} values in column {column.path_in_schema} of {group.num_rows} rows"
            if width is None:
                text_bytes += column.total_uncompressed_size
            elif column.total_uncompressed_size > 2 * group.num_rows * width + _SLACK_BYTES:
                return (
                    f"declares {column.total_uncompressed_size} uncompressed bytes in column {column.path_in_schema} "
                    f"of {group.num_rows} rows"
                )
    if counted_rows != entry.rows:
        return f"has row groups of {counted_rows} rows in all, the manifest {entry.rows}"
    if text_bytes > _TEXT_EXPANSION * size + _SLACK_BYTES:
        return f"declares {text_bytes} uncompressed bytes of text, more than {_TEXT_EXPANSION} times its size"
    return None


def decoded_problem(table: pa.Table, entry: PartitionEntry, manifest: Manifest) -> str | None:
    """What in decoded content no snapshot writes, where checkout would silently write something
    else (pure; vectorised: Arrow's own checks, no Python loop over rows)."""
    if table.num_rows != entry.rows:
        return f"decodes to {table.num_rows} rows, not {entry.rows}"
    # Nulls: chunk_id and the date would be written as 0 and 1970-01-01; a null vector would
    # shift every later row of the array (its slot has no values) and leave rows unwritten.
    for name in (CHUNK_ID, DATE, EMBEDDING):
        if table.column(name).null_count:
            return f"has nulls in column {name}, which a snapshot never writes"
    for chunk in table.column(EMBEDDING).chunks:
        if chunk.values.null_count or len(chunk.flatten()) != len(chunk) * manifest.dim:
            return "has nulls inside embedding vectors, which a snapshot never writes"
    days = pc.min_max(table.column(DATE).cast(pa.int32()))
    if table.num_rows and not (_YEAR_0_DAY <= days["min"].as_py() and days["max"].as_py() <= _LAST_DAY):
        return "has dates outside the years 0 to 9999"
    # Parquet readers do not check that string columns hold UTF-8; checkout copies their bytes
    # into metadata.json, which must be UTF-8 JSON.
    try:
        for field in table.schema:
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                table.column(field.name).validate(full=True)
    except pa.ArrowInvalid as exc:
        return f"has text that is not UTF-8 ({' '.join(str(exc).split())[:120]})"
    return None


def schema_problem(schema: pa.Schema, manifest: Manifest) -> str | None:
    """What in a partition's Arrow schema breaks SPEC.md §5.1 for `manifest`, or None."""
    names = schema.names
    if EMBEDDING not in names:
        return "has no embedding column"
    if [n for n in _COLUMN_ORDER if n in names] != names or names[:2] != [CHUNK_ID, DATE]:
        return f"has columns {', '.join(names)[:200]}, not those of a partition in their order"
    for field in schema:
        if field.name == EMBEDDING:
            value_type = _FLOAT_TYPES[np.dtype(manifest.dtype).itemsize]
            expected = f"fixed_size_list<{value_type}, {manifest.dim}>"
            actual = field.type
            if not (
                pa.types.is_fixed_size_list(actual) and actual.list_size == manifest.dim and actual.value_type == value_type
            ):
                return f"has an embedding column of type {actual}, not {expected}"
        elif field.type not in _COLUMN_TYPES[field.name]:
            return f"has a {field.name} column of type {field.type}"
    return None
