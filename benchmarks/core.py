"""Snapshot and checkout of a generated cache, timed next to their floors in the same run.

    python -m benchmarks.core [--rows 100000] [--dim 768] [--months 30] [--repeat 3]

Prints a markdown table; each ratio compares figures measured side by side in this process
(these VMs are too noisy for absolute times to mean much across runs).
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import msgspec
import pyarrow.parquet as pq

from benchmarks.floors import build_arrow_table, timed
from egregora_ds import Repository
from egregora_ds.parquet_io import WRITER_OPTIONS
from egregora_ds.sample import edit_chunk, write_sample_cache


def _load_floor(cache: Path) -> None:
    with open(cache / "embeddings.pkl", "rb") as f:
        pickle.load(f)
    msgspec.json.decode((cache / "metadata.json").read_bytes())


def _write_floor(cache: Path, out: Path) -> None:
    """Cache load + Arrow table + one plain pq.write_table with egds' settings."""
    pq.write_table(build_arrow_table(cache), out / "floor.parquet", **WRITER_OPTIONS)


def _checkout_floor(repo: Repository, out: Path) -> None:
    """Read the version's Parquet objects + pickle.dump of the array + JSON dump of the chunks."""
    import numpy as np

    _, manifest = repo.resolve("latest")
    tables = [pq.read_table(repo.store.object_path(p.object, ".parquet")) for p in manifest.partitions]
    vectors = np.concatenate([t.column("embedding").combine_chunks().flatten().to_numpy() for t in tables])
    chunks = [row for t in tables for row in t.drop_columns(["embedding"]).to_pylist()]
    with open(out / "embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": vectors.reshape(manifest.rows, manifest.dim)}, f, protocol=5)
    (out / "metadata.json").write_bytes(msgspec.json.encode({"chunks": chunks}, enc_hook=str))


def run(rows: int, dim: int, months: int, repeat: int) -> list[tuple[str, float, str, float]]:
    base = Path(tempfile.mkdtemp(prefix="egds-bench-"))
    try:
        cache = base / "cache"
        write_sample_cache(cache, rows=rows, dim=dim, months=months)
        scratch = base / "scratch"
        scratch.mkdir()

        def fresh_snapshot() -> None:
            root = Path(tempfile.mkdtemp(dir=base))
            Repository.init(root, cache=str(cache)).snapshot("bench")
            shutil.rmtree(root)

        floor_write = timed(_write_floor, cache, scratch, repeat=repeat)
        snapshot_full = timed(fresh_snapshot, repeat=repeat)
        repo = Repository.init(base / "repo", cache=str(cache))
        repo.snapshot("v1")
        floor_load = timed(_load_floor, cache, repeat=repeat)
        noop_stamped = timed(repo.snapshot, "noop", repeat=repeat)

        def noop_parsed() -> None:
            (repo.store.root / "state.json").unlink(missing_ok=True)
            repo.snapshot("noop")

        noop_full = timed(noop_parsed, repeat=repeat)
        edit_chunk(cache, chunk_id=5)
        started = time.perf_counter()
        result = repo.snapshot("edit one chunk")
        incremental = time.perf_counter() - started
        assert result.partitions.written == 1, result

        def fresh_checkout() -> None:
            target = Path(tempfile.mkdtemp(dir=base))
            repo.checkout("latest", cache=target / "rag")
            shutil.rmtree(target)

        checkout = timed(fresh_checkout, repeat=repeat)
        checkout_floor = timed(_checkout_floor, repo, scratch, repeat=repeat)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return [
        ("full snapshot vs load + plain write_table", snapshot_full, "floor", floor_write),
        ("no-op snapshot (cache stamp) vs cache load", noop_stamped, "load", floor_load),
        ("no-op snapshot (parse) vs cache load", noop_full, "load", floor_load),
        ("one-chunk edit snapshot vs no-op (parse)", incremental, "no-op", noop_full),
        ("checkout latest vs read + dump", checkout, "floor", checkout_floor),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--months", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = run(args.rows, args.dim, args.months, args.repeat)
    print(f"\n{args.rows:,} rows x {args.dim} ({args.months} months), median of {args.repeat}\n")
    print("| scenario | egds (s) | baseline | baseline (s) | ratio |")
    print("|---|---|---|---|---|")
    for name, egds, label, baseline in results:
        print(f"| {name} | {egds:.3f} | {label} | {baseline:.3f} | {egds / baseline:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("scenario", "egds_s", "baseline", "baseline_s"), r)) for r in results], indent=2))


if __name__ == "__main__":
    main()
