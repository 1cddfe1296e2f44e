"""The peer a user would pick for versioned embeddings: Lance (``pip install pylance``, the ``bench`` extra).

The same Arrow table egds stores (built column-wise from the cache, ``floors.build_arrow_table``) is written
as a Lance dataset; a new month is appended as a new dataset version; an old version is read back to numpy.
Lance does not write a pickle cache back, so its "checkout" does strictly less work than egds' does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def available() -> str | None:
    """Lance's version, or None when pylance is not installed."""
    try:
        import lance
    except ImportError:
        return None
    return getattr(lance, "__version__", "unknown")


def write_full(cache, uri) -> int:
    """Load the cache, build the table, write it as version 1 of a new dataset. Returns the rows written."""
    import lance

    from benchmarks.floors import build_arrow_table

    table = build_arrow_table(Path(cache))
    lance.write_dataset(table, str(uri), mode="create")
    return table.num_rows


def append_new_rows(cache, uri, first_new_id: int) -> int:
    """Load the (grown) cache, keep the rows whose chunk_id >= ``first_new_id``, append them as a new version."""
    import lance

    from benchmarks.floors import build_arrow_table

    table = build_arrow_table(Path(cache))
    new = table.filter(pc.greater_equal(table.column("chunk_id"), pa.scalar(first_new_id, pa.int64())))
    dataset = lance.write_dataset(new, str(uri), mode="append")
    return dataset.version


def read_version(uri, version: int) -> np.ndarray:
    """Version ``version`` as a table; its vectors as an (N, D) float32 numpy array (returned)."""
    import lance

    table = lance.dataset(str(uri), version=version).to_table()
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy().reshape(-1, dim)
