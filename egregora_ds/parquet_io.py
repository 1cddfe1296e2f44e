"""Parquet bytes of a partition: the writer settings (SPEC.md, "Parquet files") and the reader."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .table import EMBEDDING

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


def read_partition(data: bytes | pa.Buffer) -> pa.Table:
    """Parse verified bytes (never re-read the file: what was hashed is what is parsed)."""
    # ParquetFile, not read_table: the latter loads pyarrow.dataset, which imports pandas.
    return pq.ParquetFile(pa.BufferReader(data)).read()
