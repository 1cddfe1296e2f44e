"""Physical floors on this machine: the least time any exporter/checkout could take for each step.

Every floor returns a dict of seconds (medians over ``repeat`` runs after ``warmup`` runs, via ``timed``) and bytes
where relevant. Reads are measured with a warm page cache (the warm-up run loads it), which is what repeated
benchmarks see; ``sequential_write_fsync`` is the one floor that includes the disk.

``peak_rss_of`` measures peak memory in a fresh process per call; see its docstring.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import resource
import statistics
import time
import traceback
from pathlib import Path

import blake3
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from egregora_ds.parquet_io import WRITER_OPTIONS as EGDS_WRITE_OPTIONS

# EGDS_WRITE_OPTIONS: the writer settings egds uses, imported so the floor cannot drift from them. Note that
# byte-stream-split must name the list's leaf ('embedding.list.element'), and is *also* silently ignored while
# dictionary encoding is on for that column (pyarrow's default): hence egds' explicit use_dictionary list.


def timed(fn, *args, repeat: int = 3, warmup: int = 1, **kwargs) -> float:
    """Median wall seconds of ``fn(*args, **kwargs)`` over ``repeat`` runs, after ``warmup`` unmeasured runs."""
    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --- peak memory -------------------------------------------------------------------------------------------------

def _worker(conn, fn, args, kwargs) -> None:
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as e:  # ship the failure to the parent instead of dying silently
        conn.send(("err", f"{e!r}\n{traceback.format_exc()}"))
    conn.close()


def _monitor(conn, fn, args, kwargs) -> None:
    # RUSAGE_CHILDREN is the max over *all* children a process ever reaped, so it is only meaningful in a process
    # that has exactly one child: this monitor is fresh for every measurement and spawns exactly one worker.
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)  # a Pipe, not a Queue: no feeder thread, no semaphore, no extra process
    worker = ctx.Process(target=_worker, args=(send, fn, args, kwargs))
    worker.start()
    send.close()
    try:
        status, value = recv.recv()  # receive before join: a large result would otherwise block the worker
    except EOFError:
        status, value = "err", "worker died without a result"
    worker.join()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
    conn.send((status, value, peak, worker.exitcode))
    conn.close()


def peak_rss_of(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a fresh spawned process; return ``(result, peak_rss_bytes)``.

    ``fn`` and its arguments must be picklable (a module-level function). The peak includes the worker's
    interpreter and whatever ``fn``'s module imports (~100-150 MB with numpy + pyarrow); subtract
    ``peak_rss_of(noop)`` for the increment. Two processes per call (monitor + worker) cost ~0.3-1 s.
    """
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    monitor = ctx.Process(target=_monitor, args=(send, fn, args, kwargs))
    monitor.start()
    send.close()
    status, value, peak, exitcode = recv.recv()
    monitor.join()
    if status != "ok":
        raise RuntimeError(f"peak_rss_of({getattr(fn, '__name__', fn)}) failed (exit {exitcode}): {value}")
    return value, peak


def noop() -> None:
    """Baseline for ``peak_rss_of``: the cost of the worker process itself."""


def touch(nbytes: int) -> int:
    """Calibration for ``peak_rss_of``: allocate and write ``nbytes``, return how many were touched."""
    return int(np.ones(nbytes, np.uint8).sum())


# --- floors -------------------------------------------------------------------------------------------------------

def _read_pickle(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        return pickle.load(f)["embeddings"]


def _read_json_stdlib(path: Path) -> dict:
    with open(path, "rb") as f:
        return json.loads(f.read())


def _read_json_msgspec(path: Path) -> dict:
    with open(path, "rb") as f:
        return msgspec.json.decode(f.read())


def load_cache(cache_dir, repeat: int = 3, warmup: int = 1) -> dict:
    """Floor for reading a cache: ``pickle.load`` of the array, and parsing metadata.json (stdlib and msgspec)."""
    cache_dir = Path(cache_dir)
    pkl, meta = cache_dir / "embeddings.pkl", cache_dir / "metadata.json"
    return {
        "pickle_load_s": timed(_read_pickle, pkl, repeat=repeat, warmup=warmup),
        "json_stdlib_s": timed(_read_json_stdlib, meta, repeat=repeat, warmup=warmup),
        "json_msgspec_s": timed(_read_json_msgspec, meta, repeat=repeat, warmup=warmup),
        "pickle_bytes": pkl.stat().st_size,
        "json_bytes": meta.stat().st_size,
    }


def build_arrow_table(cache_dir) -> pa.Table:
    """The egds-like Arrow table of a cache, built column-wise (the floor, not egds itself).

    Vectors go in zero-copy as FixedSizeList<float32, D>; fields egds does not know (e.g. source_lang) are dropped.
    """
    cache_dir = Path(cache_dir)
    arr = np.ascontiguousarray(_read_pickle(cache_dir / "embeddings.pkl"), dtype=np.float32)
    chunks = _read_json_msgspec(cache_dir / "metadata.json")["chunks"]

    def col(name):
        return [c.get(name) for c in chunks]

    return pa.table({
        "chunk_id": pa.array(col("chunk_id"), pa.int64()),
        "newsletter_date": pa.array(np.array(col("newsletter_date"), dtype="datetime64[D]"), pa.date32()),
        "newsletter_path": pa.array(col("newsletter_path"), pa.string()),
        "section_title": pa.array(col("section_title"), pa.string()),
        "text": pa.array(col("text"), pa.string()),
        "char_count": pa.array(col("char_count"), pa.int64()),
        "chunk_index_in_newsletter": pa.array(col("chunk_index_in_newsletter"), pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1]),
    })


def plain_parquet_write(table: pa.Table, out_dir, repeat: int = 3, warmup: int = 1) -> dict:
    """Floor for writing the table once as plain Parquet: pyarrow with egds' settings, and polars (zstd-1)."""
    import polars as pl  # imported here so that spawned workers that never call this stay light

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table.combine_chunks()  # one chunk per column: page boundaries (and bytes) do not depend on input
    pa_path, pl_path = out_dir / "floor-pyarrow.parquet", out_dir / "floor-polars.parquet"
    frame = pl.from_arrow(table)  # conversion kept out of the timing: it is not part of a write floor
    return {
        "pyarrow_s": timed(pq.write_table, table, pa_path, repeat=repeat, warmup=warmup, **EGDS_WRITE_OPTIONS),
        "pyarrow_bytes": pa_path.stat().st_size,
        "polars_s": timed(frame.write_parquet, pl_path, compression="zstd", compression_level=1,
                          row_group_size=32768, repeat=repeat, warmup=warmup),
        "polars_bytes": pl_path.stat().st_size,
    }


def _blake3_files(paths) -> list[str]:
    out = []
    for p in paths:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(str(p))
        out.append(h.hexdigest())
    return out


def blake3_bytes(paths, repeat: int = 3, warmup: int = 1) -> dict:
    """Floor for content addressing: blake3 (all cores, mmap) of every file in ``paths``."""
    paths = [Path(p) for p in paths]
    return {"seconds": timed(_blake3_files, paths, repeat=repeat, warmup=warmup),
            "bytes": sum(p.stat().st_size for p in paths)}


def _dump_pickle5(arr, path):
    with open(path, "wb") as f:
        pickle.dump({"embeddings": arr}, f, protocol=5)


def _dump_json_stdlib(chunks, path):  # json.dumps + write: same bytes as json.dump, one-shot C encoder
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"chunks": chunks}, ensure_ascii=False))


def _dump_json_stdlib_dump(chunks, path):
    # What the pipeline literally calls. json.dump walks the objects in Python (C only escapes the strings) yet
    # measured no slower than json.dumps at 100k: escaping the texts dominates, and no 120 MB string is built.
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"chunks": chunks}, f, ensure_ascii=False)


def _dump_json_msgspec(chunks, path):  # fastest, but not byte-identical (no spaces after ':' and ',')
    with open(path, "wb") as f:
        f.write(msgspec.json.encode({"chunks": chunks}))


def dump_cache(arr: np.ndarray, chunks: list[dict], out_dir, repeat: int = 3, warmup: int = 1) -> dict:
    """Checkout floor: writing a cache back -- pickle protocol 5, and metadata.json with msgspec and stdlib json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pkl = out_dir / "embeddings.pkl"
    res = {"pickle5_s": timed(_dump_pickle5, arr, pkl, repeat=repeat, warmup=warmup),
           "pickle_bytes": pkl.stat().st_size}
    for key, fn in [("json_msgspec_s", _dump_json_msgspec), ("json_stdlib_dumps_s", _dump_json_stdlib),
                    ("json_stdlib_dump_s", _dump_json_stdlib_dump)]:
        res[key] = timed(fn, chunks, out_dir / "metadata.json", repeat=repeat, warmup=warmup)
    res["json_bytes"] = (out_dir / "metadata.json").stat().st_size  # the last one written: stdlib bytes
    return res


def _write_fsync(nbytes: int, path: Path, block: bytes) -> None:
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(block[:left] if left < len(block) else block)
        os.fsync(f.fileno())


def sequential_write_fsync(nbytes: int, out_dir, repeat: int = 3, warmup: int = 1) -> dict:
    """Floor of the disk: write ``nbytes`` sequentially in 8 MiB blocks and fsync (random bytes, incompressible)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "floor-sequential.bin"
    seconds = timed(_write_fsync, nbytes, path, os.urandom(8 << 20), repeat=repeat, warmup=warmup)
    path.unlink()
    return {"seconds": seconds, "bytes": nbytes, "gb_per_s": nbytes / seconds / 1e9 if seconds else float("inf")}
