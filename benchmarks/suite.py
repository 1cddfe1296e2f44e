"""The benchmark suite: every scenario of issue 4, egds next to the seed path, Lance and the floors, in one run.

Method (benchmarks/README.md has the reasoning): each timed figure is the median of ``repeat`` runs after
``warmup`` unmeasured runs, in this process, with a warm page cache; untimed preparation (fresh link copies of
template repositories, fresh target directories) happens before each run. Peak RSS is measured once per
scenario in a fresh spawned process (``floors.peak_rss_of``), prepared the same way. Ratios compare figures
measured in the same run, never across runs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks import floors, lance_peer, workers
from benchmarks.seed_exporter import export_like_seed
from benchmarks.workspace import Workspace, dir_bytes, link_cache, scan, written_between
from egregora_ds import Repository
from egregora_ds.parquet_io import WRITER_OPTIONS

SIZES = {"small": 20_000, "100k": 100_000, "1m": 1_000_000}
SEED_MAX_ROWS = 300_000  # the seed path needs ~42 GB at 1M (notes/parquet-performance.md): it cannot run here
INTERLEAVE_MAX_ROWS = 300_000  # above, each spec runs on its own: holding every spec's inputs at once would not fit
IA_ITEM = "egds-bench-item"
IA_ENV = {"IA_ACCESS_KEY_ID": "test-access", "IA_SECRET_ACCESS_KEY": "test-secret", "EGDS_RETRY_BACKOFF": "0.01"}


@dataclass
class Spec:
    """One timed scenario: ``op(prepare())``; ``after(ctx, result)`` checks and counts, untimed; ``rss()`` gives
    ``(fn, *args)`` for the fresh-process peak-RSS run; ``done()`` frees what the spec held."""

    name: str
    op: Callable[[Any], Any]
    prepare: Callable[[], Any] | None = None
    after: Callable[[Any, Any], None] | None = None
    rss: Callable[[], tuple] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    done: Callable[[], Any] | None = None
    in_worker: bool = False
    """``op`` runs the scenario in a fresh process and returns ``(seconds measured there, peak RSS)``."""


class Suite:
    def __init__(self, ws: Workspace, *, repeat: int, warmup: int, rss: bool, seed: bool, lance: bool,
                 interleave: bool = True, log: Callable[[str], None] = print) -> None:
        self.ws, self.repeat, self.warmup, self.rss, self.interleave = ws, repeat, warmup, rss, interleave
        self.lance_v1 = ws.root / "lance-v1.lance"
        self.lance_v2 = ws.root / "lance-v2.lance"
        self.run_seed, self.run_lance, self.log = seed, lance, log
        self.m: dict[str, dict[str, Any]] = {}  # measurement name -> times, median, rss, ...
        self.counts: dict[str, Any] = {}  # bytes, objects, requests: exact figures, not timings
        self.notes: list[str] = []
        self.scratch = ws.scratch

    # ---- measuring -------------------------------------------------------------------------------------

    def group(self, title: str, specs: list[Spec]) -> None:
        """Time every spec ``warmup + repeat`` times, keeping the last ``repeat``; then one peak-RSS run each.

        Interleaved (run i of every spec before run i+1 of any), so that the two sides of a ratio are sampled in
        the same moments and a change of load on this shared machine hits both; sequential at sizes where
        holding every spec's inputs at once would not fit in memory. ``spec.done`` runs (untimed) once a spec
        has no runs left, to free what it held."""
        if title:
            self.log(title)
        batches = [specs] if self.interleave else [[s] for s in specs]
        for batch in batches:
            times: dict[str, list[float]] = {s.name: [] for s in batch}
            peaks: dict[str, list[int]] = {s.name: [] for s in batch}
            for i in range(self.warmup + self.repeat):
                for spec in batch:
                    ctx = spec.prepare() if spec.prepare else None
                    gc.collect()
                    started = time.perf_counter()
                    result = spec.op(ctx)
                    elapsed = time.perf_counter() - started
                    if spec.in_worker:
                        elapsed, peak = result
                        peaks[spec.name].append(peak)
                    if spec.after:
                        spec.after(ctx, result)
                    if i >= self.warmup:
                        times[spec.name].append(elapsed)
                    del ctx, result
                    if not self.interleave:
                        release_memory()
            for spec in batch:
                entry: dict[str, Any] = {"times": times[spec.name], "median": statistics.median(times[spec.name]),
                                         **spec.info}
                if spec.done:
                    spec.done()
                    release_memory()
                if spec.in_worker:
                    entry["rss"] = int(statistics.median(peaks[spec.name]))
                    entry["rss_all"] = peaks[spec.name]
                elif spec.rss is not None and self.rss:
                    fn, *args = spec.rss()
                    entry["rss"] = floors.peak_rss_of(fn, *args)[1]
                self.m[spec.name] = entry
                shown = f"  {spec.name:<30} {entry['median']:8.3f} s"
                if "rss" in entry:
                    shown += f"   peak RSS {entry['rss'] / 2**20:8.0f} MiB"
                self.log(shown)

    def measure(self, name: str, op: Callable[[Any], Any], prepare: Callable[[], Any] | None = None,
                rss: Callable[[], tuple] | None = None, after: Callable[[Any, Any], None] | None = None,
                **info: Any) -> None:
        """One spec on its own (for scenarios whose runs must follow each other, e.g. a no-op push)."""
        self.group("", [Spec(name, op, prepare, after, rss, info)])

    def median(self, name: str) -> float | None:
        entry = self.m.get(name)
        return None if entry is None else entry["median"]

    def fresh_dir(self, name: str) -> Callable[[], Path]:
        """A prepare step: a new empty directory per run, the previous run's deleted first -- every floor writes
        new files, as egds does (overwriting one file in place reuses its page-cache pages: on this VM writing
        300 MB into a new file took 0.67 s, into a just-deleted one's place 0.07 s)."""
        def prepare() -> Path:
            path = self.scratch.fresh(name)
            path.mkdir(parents=True)
            return path
        return prepare

    @staticmethod
    def _check(ok: bool, what: str) -> None:
        if not ok:
            raise AssertionError(what)

    # ---- scenario 1: full snapshot, next to the load and write floors, the seed path and Lance --------

    def full_snapshot(self) -> None:
        ws = self.ws
        base = ws.caches["base"]
        held: dict[str, Any] = {"table": floors.build_arrow_table(base).combine_chunks()}
        import polars as pl

        held["frame"] = pl.from_arrow(held["table"])

        def fresh_repo() -> Path:
            return ws.new_repo(self.scratch.fresh("full"), "base").root

        def check(ctx, result) -> None:
            assert result.created and result.partitions.written == ws.months, result

        specs = [
            Spec("floor_load_pickle", lambda _: floors._read_pickle(base / "embeddings.pkl")),
            Spec("floor_load_json_msgspec", lambda _: floors._read_json_msgspec(base / "metadata.json")),
            Spec("floor_load_json_stdlib", lambda _: floors._read_json_stdlib(base / "metadata.json")),
            Spec("floor_write_pyarrow", lambda d: pq.write_table(held["table"], d / "pa.parquet", **WRITER_OPTIONS),
                 self.fresh_dir("floor-pa"),
                 done=lambda: self.compression_study(held.pop("table"))),
            Spec("floor_write_polars", lambda d: held["frame"].write_parquet(
                d / "pl.parquet", compression="zstd", compression_level=1, row_group_size=32768), self.fresh_dir("floor-pl"),
                 done=lambda: held.pop("frame")),
            Spec("snapshot_full", lambda root: Repository.open(root).snapshot("v1"), fresh_repo, check,
                 rss=lambda: (workers.egds_snapshot, str(fresh_repo()))),
        ]
        if self.run_seed:
            specs.append(Spec("seed_export", lambda out: floors.peak_rss_of(workers.seed_export, str(base), str(out)),
                              lambda: self.scratch.fresh("seed"), in_worker=True))
        else:
            self.notes.append(f"seed path not run at {ws.rows:,} rows: it builds one Python float per dimension "
                              "(~42 GB at 1M rows, notes/parquet-performance.md), more than this machine has")
        if self.run_lance:
            specs.append(Spec("lance_write", lambda uri: lance_peer.write_full(base, uri),
                              lambda: self.scratch.fresh("lance") / "ds.lance",
                              rss=lambda: (workers.lance_write, str(base), str(self.scratch.fresh("lance") / "ds.lance"))))
        else:
            self.notes.append("Lance not measured: pylance is not installed (pip install pylance, the bench extra)")
        self.group("full snapshot, with the cache-load and plain-write floors, the seed path and Lance", specs)

        pa_file, pl_file = self.scratch._last["floor-pa"] / "pa.parquet", self.scratch._last["floor-pl"] / "pl.parquet"
        self.counts["floor_write_bytes"] = {"pyarrow": pa_file.stat().st_size, "polars": pl_file.stat().st_size}
        nbytes = pa_file.stat().st_size
        block = os.urandom(8 << 20)
        self.measure("floor_fsync_write", lambda d: floors._write_fsync(nbytes, d / "seq.bin", block),
                     self.fresh_dir("floor-seq"), bytes=nbytes)
        for name in ("floor-pa", "floor-pl", "floor-seq"):
            self.scratch.drop(name)
        if self.rss:
            self.m["floor_load_pickle"]["rss_load_msgspec"] = floors.peak_rss_of(workers.load_cache_msgspec, str(base))[1]
            self.m["floor_load_pickle"]["rss_load_stdlib"] = floors.peak_rss_of(workers.load_cache_stdlib, str(base))[1]
            self.m["worker_baseline"] = {"times": [0.0], "median": 0.0, "rss": floors.peak_rss_of(workers.noop)[1]}
        self.log(f"  (load floor = pickle + msgspec = {self.load_floor():.3f} s; "
                 f"write floor = min(pyarrow, polars) = {self.write_floor():.3f} s)")

        v1 = Repository.open(ws.repos["t1"])
        files = [v1.store.object_path(p.object, ".parquet") for p in v1.resolve("v1")[1].partitions]
        self.counts["egds_v1"] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
                                  "embedding_bytes": column_bytes(files, "embedding")}
        self.counts["cache_bytes"] = {n: (base / n).stat().st_size for n in ("embeddings.pkl", "metadata.json")}
        if self.run_seed:
            out = self.scratch.fresh("seed")
            export_like_seed(base, out)
            files = sorted(out.glob("*.parquet"))
            self.counts["seed"] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
                                   "embedding_bytes": column_bytes(files, "embedding")}
        if self.run_lance:
            lance_peer.write_full(base, self.lance_v1)
            self.counts["lance_v1_bytes"] = dir_bytes(self.lance_v1)
        for name in ("full", "seed", "lance"):
            self.scratch.drop(name)

    def load_floor(self) -> float:
        return self.median("floor_load_pickle") + self.median("floor_load_json_msgspec")

    def write_floor(self) -> float:
        return min(self.median("floor_write_pyarrow"), self.median("floor_write_polars"))

    def compression_study(self, table: pa.Table) -> None:
        """Embedding-column bytes under candidate writer settings (once each: sizes are exact, times indicative)."""
        out = self.scratch.fresh("compression")
        out.mkdir(parents=True)
        settings = {
            "egds (zstd-1 + byte-stream-split)": WRITER_OPTIONS,
            "zstd-1, no byte-stream-split": {**WRITER_OPTIONS, "use_byte_stream_split": False},
            "zstd-3 + byte-stream-split": {**WRITER_OPTIONS, "compression_level": 3},
            "zstd-9, pyarrow defaults (the seed's)": dict(compression="zstd", compression_level=9),
        }
        study = {}
        for label, options in settings.items():
            path = out / "c.parquet"
            started = time.perf_counter()
            pq.write_table(table, path, **options)
            elapsed = time.perf_counter() - started
            study[label] = {"seconds": elapsed, "embedding_bytes": column_bytes([path], "embedding"),
                            "text_bytes": column_bytes([path], "text"), "file_bytes": path.stat().st_size}
        raw = table.column("embedding").combine_chunks().flatten().nbytes
        self.counts["compression"] = {"raw_embedding_bytes": raw, "settings": study}
        self.scratch.drop("compression")

    # ---- scenarios 2 and 3: incremental and no-op snapshots ------------------------------------------

    def incremental_snapshots(self) -> None:
        ws = self.ws
        noop_root = ws.copy_repo("t1", "noop")
        assert not Repository.open(noop_root).snapshot("stamp it").created  # a copy's first snapshot stamps it

        def unstamped() -> Path:
            (noop_root / ".egds" / "state.json").unlink(missing_ok=True)
            return noop_root

        unchanged = lambda _, result: self._check(not result.created, "no-op created a version")  # noqa: E731
        # no-op (parse) first: each of its runs leaves the stamp the stamped no-op then finds
        specs = [Spec("snapshot_noop_parse", lambda r: Repository.open(r).snapshot("noop"), unstamped, unchanged,
                      rss=lambda: (workers.egds_snapshot, str(unstamped()))),
                 Spec("snapshot_noop_stamped", lambda _: Repository.open(noop_root).snapshot("noop"), None, unchanged,
                      rss=lambda: (workers.egds_snapshot, str(noop_root)))]
        for mutation in ("append", "edit", "delete"):
            def mutated(mutation=mutation) -> Path:
                root = ws.copy_repo("t1", f"incr-{mutation}")
                link_cache(ws.caches[mutation], root / "cache")
                return root

            def check(root, result) -> None:
                assert result.created and result.partitions.written == 1, result

            specs.append(Spec(f"snapshot_{mutation}", lambda root, m=mutation: Repository.open(root).snapshot(m),
                              mutated, check, rss=lambda mutated=mutated: (workers.egds_snapshot, str(mutated())),
                              info={"partition": ws.changed[mutation]}))
            # its floor: one plain write of the changed partition, as it is in the mutated cache
            table = floors.build_arrow_table(ws.caches[mutation])
            month = pc.strftime(table.column("newsletter_date"), format="%Y-%m")
            part = table.filter(pc.equal(month, ws.changed[mutation])).combine_chunks()
            del table
            specs.append(Spec(f"floor_partition_write_{mutation}",
                              lambda d, part=part: pq.write_table(part, d / "p.parquet", **WRITER_OPTIONS),
                              self.fresh_dir(f"floor-part-{mutation}"),
                              info={"rows": part.num_rows, "partition": ws.changed[mutation]}))
        if self.run_lance:
            def appendable() -> Path:
                target = self.scratch.fresh("lance-append") / "ds.lance"
                shutil.copytree(self.lance_v1, target)
                return target

            specs.append(Spec("lance_append", lambda uri: lance_peer.append_new_rows(ws.caches["append"], uri, ws.rows),
                              appendable, lambda uri, version: self._check(version == 2, "Lance append made v2")))
        self.group("incremental and no-op snapshots, with one-partition write floors (and Lance append)", specs)
        for name in ("noop", "incr-append", "incr-edit", "incr-delete", "floor-part-append", "floor-part-edit",
                     "floor-part-delete", "lance-append"):
            self.scratch.drop(name)

    # ---- scenario 4: checkout --------------------------------------------------------------------------

    def checkouts(self) -> None:
        ws = self.ws
        hist = Repository.open(ws.repos["hist"])
        if self.run_lance:  # Lance's v1 is read back from a dataset that has a v2, as egds' is
            self.lance_v2 = self.ws.root / "lance-v2.lance"
            shutil.copytree(self.lance_v1, self.lance_v2)
            lance_peer.append_new_rows(ws.caches["append"], self.lance_v2, ws.rows)
            self.counts["lance_v2_bytes"] = dir_bytes(self.lance_v2)
        for rev, cache in (("latest", "all"), ("v1", "base")):
            rows = ws.rows if rev == "v1" else ws.rows + ws.new_rows - 1

            def target(rev=rev) -> Path:
                return self.scratch.fresh(f"checkout-{rev}") / "rag"

            def check(path, result, rows=rows) -> None:
                assert not result.already_current and result.rows == rows, result
                assert (path / "embeddings.pkl").is_file() and (path / "metadata.json").is_file()

            # floor: read the version's objects + pickle.dump of the array + JSON dump of the chunk dicts
            files = [hist.store.object_path(p.object, ".parquet") for p in hist.resolve(rev)[1].partitions]
            held = {"arr": floors._read_pickle(ws.caches[cache] / "embeddings.pkl"),
                    "chunks": floors._read_json_msgspec(ws.caches[cache] / "metadata.json")["chunks"]}
            specs = [  # floors first: run on their own (above 300k rows), they free their inputs before egds runs
                Spec(f"floor_read_objects_{rev}", lambda _, files=files: [pq.read_table(f) for f in files]),
                Spec(f"floor_dump_pickle_{rev}", lambda d: floors._dump_pickle5(held["arr"], d / "embeddings.pkl"),
                     self.fresh_dir(f"dump-pickle-{rev}"),
                     done=lambda: held.pop("arr")),
                Spec(f"floor_dump_json_{rev}",
                     lambda d: floors._dump_json_msgspec(held["chunks"], d / "metadata.json"), self.fresh_dir(f"dump-json-{rev}"),
                     done=lambda: held.pop("chunks")),
                Spec(f"checkout_{rev}", lambda path, rev=rev: Repository.open(ws.repos["hist"]).checkout(rev, cache=path),
                     target, check, rss=lambda rev=rev, target=target: (workers.egds_checkout, str(ws.repos["hist"]), rev,
                                                                        str(target()))),
            ]
            if rev == "v1" and self.run_lance:
                specs.append(Spec("lance_read_v1", lambda _: lance_peer.read_version(self.lance_v2, 1),
                                  after=lambda _, arr: self._check(arr.shape == (ws.rows, ws.dim), "Lance v1 shape"),
                                  rss=lambda: (workers.lance_read, str(self.lance_v2), 1)))
            self.group(f"checkout {rev}, with its read + dump floor", specs)
            self.scratch.drop(f"dump-pickle-{rev}")
            self.scratch.drop(f"dump-json-{rev}")
            self.scratch.drop(f"checkout-{rev}")

    def checkout_floor(self, rev: str) -> float:
        return sum(self.median(f"floor_{k}_{rev}") for k in ("read_objects", "dump_pickle", "dump_json"))

    # ---- scenario 5: push to a directory remote -------------------------------------------------------

    def expected_incremental_upload(self, card_files: dict[str, int]) -> dict[str, int]:
        """What an incremental push must send: objects v2 names and v1 does not, v2's manifest, the card."""
        hist = Repository.open(self.ws.repos["pushed"])
        (v2_id, v2), (_, v1) = hist.resolve("v2"), hist.resolve("v1")
        named = lambda m: {(p.object, ".parquet") for p in m.partitions} | {(i, ".json") for i in (m.extras, m.index) if i}  # noqa: E731
        new = named(v2) - named(v1)
        objects = sum(hist.store.object_path(i, s).stat().st_size for i, s in new)
        manifests = hist.store.manifest_path(v2_id).stat().st_size
        return {"objects": len(new), "object_bytes": objects, "manifest_bytes": manifests,
                "card_bytes": sum(card_files.values()), "total": objects + manifests + sum(card_files.values())}

    def directory_push(self) -> None:
        ws = self.ws
        self.log("push to a directory remote (runs in order: the no-op push follows the last incremental one)")
        v1_total = dir_bytes(ws.remote_v1_pristine)

        def first() -> tuple[Path, Path]:
            root, remote = ws.copy_repo("t1", "push1"), self.scratch.fresh("remote1")
            Repository.open(root).remote_add("origin", str(remote))
            return root, remote

        def first_after(ctx, result) -> None:
            sent = written_between({}, scan(ctx[1]))
            self.counts["push_dir_first"] = {"files": len(sent), "bytes": sum(sent.values()),
                                             "objects": sum(k.startswith("egds/objects/") for k in sent),
                                             "bytes_reported": result.bytes_uploaded, "remote_bytes_expected": v1_total}

        self.measure("push_dir_first", lambda ctx: Repository.open(ctx[0]).push("origin"), first, after=first_after,
                     rss=lambda: (workers.egds_push, str(first()[0]), "origin"))
        self.scratch.drop("push1")
        self.scratch.drop("remote1")

        def incremental() -> tuple[Path, dict]:
            ws.reset_remote_v1()
            return ws.copy_repo("pushed", "push2"), scan(ws.remote_v1)

        def incremental_after(ctx, result) -> None:
            sent = written_between(ctx[1], scan(ws.remote_v1))
            card = {k: v for k, v in sent.items() if not k.startswith(("egds/objects/", "egds/manifests/"))}
            self.counts["push_dir_incremental"] = {
                "files": len(sent), "bytes": sum(sent.values()), "keys": sorted(sent),
                "objects": sum(k.startswith("egds/objects/") for k in sent),
                "manifests": sum(k.startswith("egds/manifests/") for k in sent),
                "bytes_reported": result.bytes_uploaded, "expected": self.expected_incremental_upload(card)}

        self.measure("push_dir_incremental", lambda ctx: Repository.open(ctx[0]).push("origin"), incremental,
                     after=incremental_after, rss=lambda: (workers.egds_push, str(incremental()[0]), "origin"))
        root = self.scratch._last["push2"]  # the last repetition: v2 pushed; pushing again changes nothing

        def noop() -> dict:
            return scan(ws.remote_v1)

        def noop_after(before, result) -> None:
            sent = written_between(before, scan(ws.remote_v1))
            previous = self.counts.get("push_dir_noop", {"files": 0, "bytes": 0})
            self.counts["push_dir_noop"] = {"files": max(previous["files"], len(sent)),
                                            "bytes": max(previous["bytes"], sum(sent.values()))}

        self.measure("push_dir_noop", lambda _: Repository.open(root).push("origin"), noop, after=noop_after)
        self.scratch.drop("push2")
        ws.reset_remote_v1()

    # ---- scenario 6: push and clone through the archive.org emulator ---------------------------------

    def emulator(self) -> None:
        from egregora_ds.testing.ia_emulator import IAEmulator

        ws = self.ws
        self.log("push and clone through the archive.org emulator")
        state: dict[str, Any] = {}

        def fresh_emulator(preload: Path | None = None) -> IAEmulator:
            old = state.pop("emu", None)
            if old is not None:
                old.stop()
            emu = IAEmulator().start()
            if preload is not None:
                for key in scan(preload):
                    emu.put_file(IA_ITEM, key, (preload / key).read_bytes(), {"mediatype": "data"})
            os.environ["EGDS_IA_ENDPOINT"] = emu.endpoint
            state["emu"] = emu
            return emu

        def summary(emu: IAEmulator) -> dict[str, Any]:
            reqs = emu.requests
            puts = [r for r in reqs if r.method == "PUT"]
            return {
                "requests": len(reqs),
                "inventory": sum(r.method == "GET" and r.path == f"/metadata/{IA_ITEM}" for r in reqs),
                "downloads": sum(r.method == "GET" and "/download/" in r.path for r in reqs),
                "puts": len(puts), "put_objects": sum("/egds/objects/" in r.path for r in puts),
                "bytes_in": sum(r.bytes_in for r in reqs), "bytes_out": sum(r.bytes_out for r in reqs),
                "put_keys": sorted(r.path.split("/", 2)[2] for r in puts),
                "errors": len(emu.errors), "failed": sum(r.status is None or r.status >= 400 for r in reqs),
            }

        def with_remote(template: str, name: str, preload: Path | None) -> Path:
            fresh_emulator(preload)
            root = ws.copy_repo(template, name)
            Repository.open(root).remote_add("ia", f"ia:{IA_ITEM}")
            return root

        saved = {k: os.environ.get(k) for k in (*IA_ENV, "EGDS_IA_ENDPOINT")}
        os.environ.update(IA_ENV)
        try:
            self.measure("push_ia_first", lambda root: Repository.open(root).push("ia"),
                         lambda: with_remote("t1", "iapush1", None),
                         after=lambda root, r: self.counts.__setitem__("push_ia_first", summary(state["emu"])),
                         rss=lambda: (workers.egds_push, str(with_remote("t1", "iapush1", None)), "ia"))
            self.scratch.drop("iapush1")

            def incremental_after(root, result) -> None:
                s = summary(state["emu"])
                card = {k: len(state["emu"].get_file(IA_ITEM, k)) for k in s["put_keys"]
                        if not k.startswith(("egds/objects/", "egds/manifests/"))}
                s["expected"] = self.expected_incremental_upload(card)
                self.counts["push_ia_incremental"] = s

            self.measure("push_ia_incremental", lambda root: Repository.open(root).push("ia"),
                         lambda: with_remote("pushed", "iapush2", ws.remote_v1_pristine), after=incremental_after,
                         rss=lambda: (workers.egds_push, str(with_remote("pushed", "iapush2", ws.remote_v1_pristine)), "ia"))
            root = with_remote("pushed", "iapush2", ws.remote_v1_pristine)
            Repository.open(root).push("ia")
            emu = state["emu"]

            def noop() -> None:
                emu.clear_log()

            self.measure("push_ia_noop", lambda _: Repository.open(root).push("ia"), noop,
                         after=lambda _, r: self.counts.__setitem__("push_ia_noop", summary(emu)))

            # clone the v1 + v2 item just pushed; time spent hashing (verification) is summed per call
            hashing: dict[str, float] = {}

            def target() -> Path:
                emu.clear_log()
                hashing.clear()
                return self.scratch.fresh("clone") / "c"

            def clone_after(path, result) -> None:
                s = summary(emu)
                s["hash_seconds"] = dict(hashing)
                s["rows"] = result.rows
                self.counts["clone_ia"] = s
                blake3_s = sum(v for k, v in hashing.items() if k != "content re-derivation")
                self.m.setdefault("clone_verification", {"times": [], "median": 0.0})["times"].append(blake3_s)
                self.m.setdefault("clone_content_rederivation", {"times": [], "median": 0.0})["times"].append(
                    hashing.get("content re-derivation", 0.0))

            with instrument_hashing(hashing):
                self.measure("clone_ia", lambda path: Repository.clone(f"ia:{IA_ITEM}", path), target,
                             after=clone_after, rss=lambda: (workers.egds_clone, f"ia:{IA_ITEM}", str(target())))
            for name in ("clone_verification", "clone_content_rederivation"):
                entry = self.m[name]
                entry["times"] = entry["times"][self.warmup:]
                entry["median"] = statistics.median(entry["times"])
            self.scratch.drop("clone")
            self.scratch.drop("iapush2")
        finally:
            if "emu" in state:
                state.pop("emu").stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # ---- scenario 7: diff and verify -----------------------------------------------------------------

    def diff_verify(self) -> None:
        ws = self.ws
        hist = ws.repos["hist"]

        def diff_ok(_, r) -> None:
            c = r.chunks
            self._check((c.added, c.removed) == (ws.new_rows, 1) and c.text_changed == 1, f"diff counts {c}")

        ok = lambda _, r: self._check(r.ok, f"verify: {r.problems}")  # noqa: E731
        files = [p for p in (hist / ".egds" / "objects").rglob("*") if p.is_file()]
        self.group("diff and verify, with the blake3 floor", [
            Spec("diff", lambda _: Repository.open(hist).diff("v1", "v2"), after=diff_ok,
                 rss=lambda: (workers.egds_diff, str(hist), "v1", "v2", False)),
            Spec("diff_ids", lambda _: Repository.open(hist).diff("v1", "v2", ids=True), after=diff_ok,
                 rss=lambda: (workers.egds_diff, str(hist), "v1", "v2", True)),
            Spec("verify", lambda _: Repository.open(hist).verify(), after=ok,
                 rss=lambda: (workers.egds_verify, str(hist), False)),
            Spec("verify_deep", lambda _: Repository.open(hist).verify(deep=True), after=ok,
                 rss=lambda: (workers.egds_verify, str(hist), True)),
            Spec("floor_blake3_objects", lambda _: floors._blake3_files(files),
                 info={"bytes": sum(f.stat().st_size for f in files)}),
        ])

    # ---- everything ---------------------------------------------------------------------------------

    def run(self) -> None:
        for step in (self.full_snapshot, self.incremental_snapshots, self.checkouts,
                     self.directory_push, self.emulator, self.diff_verify):
            step()
            gc.collect()
        self.scratch.drop_all()


def release_memory() -> None:
    """Hand freed memory back to the OS: Python's, Arrow's pool (mimalloc here keeps it) and glibc's heap.

    Done after every run at sizes that run uninterleaved (1m): there one process holding what earlier runs freed
    next to a 10 GB checkout was killed by the OOM killer at 20 GB."""
    import ctypes

    gc.collect()
    with contextlib.suppress(Exception):
        pa.default_memory_pool().release_unused()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def instrument_hashing(into: dict[str, float]):
    """Sum the wall time of every hash egds computes while cloning: blake3 of bytes (``ids.hash_bytes`` and
    ``ids.hash_file``, wherever a module imported them: download check, store, checkout re-read) per module, and
    the content re-derivation (``table.content_hash``) under "content re-derivation".

    The sums are over calls, which may overlap on the download threads: an upper bound of their cost."""
    import importlib
    import pkgutil
    import sys

    import egregora_ds
    import egregora_ds.ids as ids
    import egregora_ds.table as table

    for info in pkgutil.walk_packages(egregora_ds.__path__, "egregora_ds."):  # patch modules imported lazily too
        try:
            importlib.import_module(info.name)
        except Exception:  # an optional extra (e.g. the MCP server's) that is not installed
            pass

    targets = {ids.hash_bytes: "blake3", ids.hash_file: "blake3", table.content_hash: "content re-derivation"}
    patched = []
    for name, mod in list(sys.modules.items()):
        if not name.startswith("egregora_ds") or mod is None or name in ("egregora_ds.ids",):
            continue
        for attr, value in list(vars(mod).items()):
            if callable(value) and value in targets and not (name == "egregora_ds.table" and attr == "content_hash"):
                patched.append((mod, attr, value, f"{targets[value]} ({name.removeprefix('egregora_ds.')})"
                                if targets[value] == "blake3" else targets[value]))

    def wrap(fn, label):
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into[label] = into.get(label, 0.0) + time.perf_counter() - started
        return timed_call

    for mod, attr, fn, label in patched:
        setattr(mod, attr, wrap(fn, label))
    try:
        yield
    finally:
        for mod, attr, fn, _ in patched:
            setattr(mod, attr, fn)


def column_bytes(files, column: str) -> int:
    """Compressed bytes of one column (all its leaves) over all row groups of ``files``."""
    total = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema == column or chunk.path_in_schema.startswith(column + "."):
                    total += chunk.total_compressed_size
    return total


def run_suite(size: str | None = None, *, rows: int | None = None, dim: int = 768, months: int = 30,
              repeat: int = 3, warmup: int = 1, rss: bool = True, seed: bool | None = None,
              lance: bool | None = None, interleave: bool | None = None, workdir: Path | None = None, keep: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the workspace, run every scenario, return the raw figures (``report`` turns them into tables)."""
    from benchmarks import report

    rows = rows if rows is not None else SIZES[size or "small"]
    seed = rows <= SEED_MAX_ROWS if seed is None else seed
    lance_version = lance_peer.available()
    lance = lance_version is not None if lance is None else lance and lance_version is not None
    started = time.perf_counter()
    machine = report.machine_info()
    base = Path(tempfile.mkdtemp(prefix="egds-bench-", dir=workdir))
    try:
        log(f"building the workspace: {rows:,} rows x {dim}, {months} months, in {base}")
        t = time.perf_counter()
        ws = Workspace.build(base, rows, dim, months)
        log(f"  ({time.perf_counter() - t:.1f} s)")
        suite = Suite(ws, repeat=repeat, warmup=warmup, rss=rss, seed=seed, lance=lance,
                      interleave=rows <= INTERLEAVE_MAX_ROWS if interleave is None else interleave, log=log)
        suite.run()
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    machine["loadavg_end"] = os.getloadavg()
    return {
        "config": {"size": size or "custom", "rows": rows, "dim": dim, "months": months, "new_rows": ws.new_rows,
                   "repeat": repeat, "warmup": warmup, "rss": rss, "seed": seed, "lance": lance,
                   "interleaved": suite.interleave,
                   "changed_partitions": ws.changed},
        "machine": machine,
        "m": suite.m,
        "counts": suite.counts,
        "notes": suite.notes,
        "elapsed_s": time.perf_counter() - started,
    }
