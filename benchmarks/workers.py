"""What runs in a fresh spawned process when the suite measures peak RSS (``floors.peak_rss_of``).

Module-level functions with plain (picklable) arguments. This module imports nothing heavy at the top, so
every worker starts from the same baseline (``noop``: the interpreter plus numpy); each function imports
what the measured tool itself needs (egds, pandas, lance), because that memory is part of its cost.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np


def noop() -> None:
    """Baseline: the worker process itself."""


def load_cache_msgspec(cache: str) -> int:
    """The load floor: ``pickle.load`` of the array + msgspec parse of metadata.json."""
    import msgspec

    with open(Path(cache) / "embeddings.pkl", "rb") as f:
        arr = pickle.load(f)["embeddings"]
    chunks = msgspec.json.decode((Path(cache) / "metadata.json").read_bytes())["chunks"]
    return int(arr.shape[0]) + len(chunks)


def load_cache_stdlib(cache: str) -> int:
    """What the pipeline does: ``pickle.load`` + ``json.load``."""
    with open(Path(cache) / "embeddings.pkl", "rb") as f:
        arr = pickle.load(f)["embeddings"]
    with open(Path(cache) / "metadata.json", encoding="utf-8") as f:
        chunks = json.load(f)["chunks"]
    return int(arr.shape[0]) + len(chunks)


def egds_snapshot(root: str) -> int:
    from egregora_ds import Repository

    return Repository.open(root).snapshot("bench").partitions.written


def egds_checkout(root: str, rev: str, target: str) -> int:
    from egregora_ds import Repository

    return Repository.open(root).checkout(rev, cache=target).rows


def egds_diff(root: str, a: str, b: str, ids: bool) -> int:
    from egregora_ds import Repository

    return Repository.open(root).diff(a, b, ids=ids).chunks.added


def egds_verify(root: str, deep: bool) -> int:
    from egregora_ds import Repository

    report = Repository.open(root).verify(deep=deep)
    assert report.ok, report.problems
    return report.objects


def egds_push(root: str, remote: str) -> int:
    from egregora_ds import Repository

    return Repository.open(root).push(remote).bytes_uploaded


def egds_clone(url: str, target: str) -> int:
    from egregora_ds import Repository

    return Repository.clone(url, target).rows


def seed_export(cache: str, out: str) -> float:
    """The seed path, timed inside this fresh process (imports excluded, as for every in-process figure).

    It runs here rather than in the suite's process because its millions of Python floats leave the allocator's
    heap pre-faulted: every later allocation in that process got faster (pickle.load 6x), skewing the floors."""
    import time

    from benchmarks.seed_exporter import export_like_seed

    started = time.perf_counter()
    export_like_seed(cache, out)
    return time.perf_counter() - started


def lance_write(cache: str, uri: str) -> int:
    from benchmarks.lance_peer import write_full

    return write_full(cache, uri)


def lance_read(uri: str, version: int) -> int:
    from benchmarks.lance_peer import read_version

    return int(read_version(uri, version).shape[0])


def touch_array(rows: int, dim: int) -> int:
    """Calibration: allocate and fill rows x dim float32."""
    return int(np.ones((rows, dim), np.float32).sum())
