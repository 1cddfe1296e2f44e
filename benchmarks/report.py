"""Targets, gates and tables: raw figures (``suite.run_suite``) -> markdown + JSON.

Every target of issue 4 is a ratio of two figures from the same run. ``margin`` is the CI noise allowance
(relative; benchmarks/README.md derives each from repeated runs): with ``--gate`` a *gated* target fails the
run only when it misses by more than its margin. Exact figures (bytes, request counts) have no margin.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

MiB = 2**20


@dataclass(frozen=True)
class Target:
    key: str
    scenario: str
    what: str  # how the ratio is formed
    ratio: Callable[[dict], float | None]
    op: str  # "<=" or ">="
    limit: float
    gated: bool = False
    margin: float = 0.0  # relative noise allowance for the gate
    note: str = ""

    def show_limit(self) -> str:
        return f"{self.op} {_num(self.limit)}"


def _m(r: dict, name: str, field: str = "median") -> float | None:
    entry = r["m"].get(name)
    return None if entry is None else entry.get(field)


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a / b if b else (0.0 if a == 0 else math.inf)


def load_floor(r: dict) -> float | None:
    a, b = _m(r, "floor_load_pickle"), _m(r, "floor_load_json_msgspec")
    return None if a is None or b is None else a + b


def write_floor(r: dict) -> float | None:
    vals = [v for v in (_m(r, "floor_write_pyarrow"), _m(r, "floor_write_polars")) if v is not None]
    return min(vals) if vals else None


def snapshot_floor(r: dict) -> float | None:
    a, b = load_floor(r), write_floor(r)
    return None if a is None or b is None else a + b


def load_rss(r: dict) -> float | None:
    entry = r["m"].get("floor_load_pickle", {})
    vals = [entry[k] for k in ("rss_load_msgspec", "rss_load_stdlib") if k in entry]
    return min(vals) if vals else None


def incremental_budget(r: dict, mutation: str) -> float | None:
    noop, part = _m(r, "snapshot_noop_parse"), _m(r, f"floor_partition_write_{mutation}")
    return None if noop is None or part is None else noop + 2 * part


def checkout_floor(r: dict, rev: str) -> float | None:
    parts = [_m(r, f"floor_{k}_{rev}") for k in ("read_objects", "dump_pickle", "dump_json")]
    return None if None in parts else sum(parts)


def push_bytes_ratio(r: dict, key: str) -> float | None:
    c = r["counts"].get(key)
    if c is None:
        return None
    sent = c["bytes"] if "bytes" in c else c["bytes_in"]
    return sent / c["expected"]["total"]


def clone_verification_share(r: dict) -> float | None:
    return _div(_m(r, "clone_verification"), _m(r, "clone_ia"))


def _count(r: dict, key: str, field: str) -> float | None:
    c = r["counts"].get(key)
    return None if c is None else c[field]


# Gated targets and their margins come from the noise study in benchmarks/README.md ("Noise margins"): a timed
# target is gated only if it is met (or within noise of it) at --size small on a healthy build and its ratio is
# stable over repeated runs; its margin is about twice the worst excursion from the median seen there.
# Targets missed at small are reported (and profiled), not gated: a gate that always fails guards nothing.
TARGETS = [
    Target("snapshot_vs_floor", "full snapshot", "time / (cache load + fastest plain Parquet write)",
           lambda r: _div(_m(r, "snapshot_full"), snapshot_floor(r)), "<=", 1.2),
    Target("snapshot_vs_seed_speed", "full snapshot", "seed path time / egds time (speed-up)",
           lambda r: _div(_m(r, "seed_export"), _m(r, "snapshot_full")), ">=", 10.0,
           note="target stated at 100k"),
    Target("snapshot_vs_seed_rss", "full snapshot", "peak RSS / seed path's peak RSS",
           lambda r: _div(_m(r, "snapshot_full", "rss"), _m(r, "seed_export", "rss")), "<=", 1 / 3,
           note="both peaks include the ~80-150 MiB of a fresh interpreter with its libraries"),
    Target("snapshot_vs_load_rss", "full snapshot", "peak RSS / peak RSS of merely loading the cache",
           lambda r: _div(_m(r, "snapshot_full", "rss"), load_rss(r)), "<=", 1.3,
           note="target stated at 1m; at small sizes the interpreter and libraries dominate both peaks"),
    Target("noop_stamped_vs_load", "no-op snapshot (cache stamp matches)", "time / cache-load floor",
           lambda r: _div(_m(r, "snapshot_noop_stamped"), load_floor(r)), "<=", 1.5, gated=True, margin=0.60),
    Target("noop_parse_vs_load", "no-op snapshot (no stamp: parses the cache)", "time / cache-load floor",
           lambda r: _div(_m(r, "snapshot_noop_parse"), load_floor(r)), "<=", 1.5,
           note="the path taken only when the cache's bytes changed but not its content, or state.json is gone"),
    *[Target(f"incremental_{m}", f"incremental snapshot: {label}",
             "time / (no-op (parse) + 2 x plain write of the changed partition)",
             lambda r, m=m: _div(_m(r, f"snapshot_{m}"), incremental_budget(r, m)), "<=", 1.0, gated=True, margin=0.30)
      for m, label in (("append", "new month"), ("edit", "one chunk edited in an old month"),
                       ("delete", "one chunk deleted"))],
    *[Target(f"checkout_{rev}", f"checkout {rev} into an empty directory",
             "time / (read the objects + pickle dump + JSON dump)",
             lambda r, rev=rev: _div(_m(r, f"checkout_{rev}"), checkout_floor(r, rev)), "<=", 1.5, gated=True,
             margin=1.0)
      for rev in ("latest", "v1")],
    Target("push_dir_incremental_bytes", "incremental push (directory)",
           "bytes written / (changed objects + manifest + card)",
           lambda r: push_bytes_ratio(r, "push_dir_incremental"), "<=", 1.02, gated=True),
    Target("push_dir_noop_bytes", "no-op push (directory)", "bytes written",
           lambda r: _count(r, "push_dir_noop", "bytes"), "<=", 0, gated=True),
    Target("push_ia_first_inventory", "first push (archive.org emulator)", "inventory (metadata) requests",
           lambda r: _count(r, "push_ia_first", "inventory"), "<=", 2, gated=True),
    Target("push_ia_incremental_inventory", "incremental push (archive.org emulator)", "inventory (metadata) requests",
           lambda r: _count(r, "push_ia_incremental", "inventory"), "<=", 2, gated=True),
    Target("push_ia_incremental_bytes", "incremental push (archive.org emulator)",
           "bytes uploaded / (changed objects + manifest + card)",
           lambda r: push_bytes_ratio(r, "push_ia_incremental"), "<=", 1.02, gated=True),
    Target("push_ia_noop_bytes", "no-op push (archive.org emulator)", "bytes uploaded",
           lambda r: _count(r, "push_ia_noop", "bytes_in"), "<=", 0, gated=True),
    Target("clone_verification", "clone (archive.org emulator)", "time in blake3 (verification) / clone time",
           clone_verification_share, "<=", 0.10, gated=True, margin=0.25,
           note="blake3 of every byte: on download, on storing, on the checkout's re-read"),
    Target("embedding_bytes_vs_seed", "compressed embedding column", "egds bytes / seed files' bytes",
           lambda r: _div(_count(r, "egds_v1", "embedding_bytes"), _count(r, "seed", "embedding_bytes")), "<=", 1.0,
           gated=True),
]


def evaluate(r: dict, targets: list[Target] = TARGETS) -> list[dict]:
    """Each target with its ratio, met (strictly), and whether the gate (target + margin) passes."""
    out = []
    for t in targets:
        ratio = t.ratio(r)
        if ratio is None:
            out.append({"key": t.key, "ratio": None, "met": None, "gate_ok": None, "gated": t.gated})
            continue
        if t.op == "<=":
            met, gate_ok = ratio <= t.limit, ratio <= t.limit * (1 + t.margin)
        else:
            met, gate_ok = ratio >= t.limit, ratio >= t.limit / (1 + t.margin)
        out.append({"key": t.key, "ratio": ratio, "met": met, "gate_ok": gate_ok, "gated": t.gated,
                    "limit": t.limit, "op": t.op, "margin": t.margin})
    return out


def gate_failures(r: dict) -> list[str]:
    by_key = {t.key: t for t in TARGETS}
    return [f"{by_key[e['key']].scenario}: {by_key[e['key']].what} = {_num(e['ratio'])}, target "
            f"{by_key[e['key']].show_limit()} (+{by_key[e['key']].margin:.0%} noise margin)"
            for e in r["targets"] if e["gated"] and e["gate_ok"] is False]


# ---- formatting --------------------------------------------------------------------------------------

def _num(x: float | None) -> str:
    if x is None:
        return "—"
    if x == math.inf:
        return "∞"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _s(x: float | None) -> str:
    return "—" if x is None else (f"{x:.3f} s" if x < 10 else f"{x:.1f} s")


def _mib(x: float | None) -> str:
    return "—" if x is None else f"{x / MiB:,.0f} MiB"


def _bytes(x: float | None) -> str:
    if x is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def _result(e: dict | None, t: Target | None) -> str:
    if e is None or e["ratio"] is None:
        return "not measured"
    text = "met" if e["met"] else "**missed**"
    if t is not None and t.gated:
        text += " (gated)" if e["gate_ok"] or e["met"] else " (gated: FAILS)"
    return text


def _time_rss(r: dict, name: str) -> str:
    t, rss = _m(r, name), _m(r, name, "rss")
    if t is None:
        return "—"
    return _s(t) + (f" · {_mib(rss)}" if rss is not None else "")


def main_table(r: dict) -> str:
    ev = {e["key"]: e for e in r["targets"]}
    tg = {t.key: t for t in TARGETS}
    rows: list[tuple[str, ...]] = []

    def row(scenario, egds, seed="—", lance="—", floor="—", key=None, ratio_text=None):
        e, t = (ev.get(key), tg.get(key)) if key else (None, None)
        ratio = ratio_text if ratio_text is not None else (_num(e["ratio"]) + (" ×" if e and e["ratio"] is not None and t.op else "") if e else "—")
        target = f"{t.show_limit()} — {t.what}" + (f" ({t.note})" if t.note else "") if t else "—"
        rows.append((scenario, egds, seed, lance, floor, ratio, target, _result(e, t) if key else "—"))

    lf, sf = load_floor(r), snapshot_floor(r)
    row("1 · full snapshot (time · peak RSS)", _time_rss(r, "snapshot_full"), _time_rss(r, "seed_export"),
        _time_rss(r, "lance_write"), f"{_s(sf)} (load {_s(lf)} + write {_s(write_floor(r))})", "snapshot_vs_floor")
    row("1 · full snapshot: speed-up over the seed path", "", "", "", "", "snapshot_vs_seed_speed")
    row("1 · full snapshot: peak RSS vs the seed path", _mib(_m(r, "snapshot_full", "rss")),
        _mib(_m(r, "seed_export", "rss")), "", "", "snapshot_vs_seed_rss")
    row("1 · full snapshot: peak RSS vs loading the cache", _mib(_m(r, "snapshot_full", "rss")), "", "",
        f"load {_mib(load_rss(r))}", "snapshot_vs_load_rss")
    lance_for = {"append": "lance_append"}
    for mut, label in (("append", "new month"), ("edit", "chunk edited in an old month"), ("delete", "chunk deleted")):
        row(f"2 · incremental snapshot: {label}", _time_rss(r, f"snapshot_{mut}"), "—",
            _time_rss(r, lance_for[mut]) if mut in lance_for else "—",
            f"{_s(incremental_budget(r, mut))} (no-op + 2 × {_s(_m(r, f'floor_partition_write_{mut}'))})",
            f"incremental_{mut}")
    row("3 · no-op snapshot (stamp matches)", _time_rss(r, "snapshot_noop_stamped"), floor=f"load {_s(lf)}",
        key="noop_stamped_vs_load")
    row("3 · no-op snapshot (no stamp: parses the cache)", _time_rss(r, "snapshot_noop_parse"), floor=f"load {_s(lf)}",
        key="noop_parse_vs_load")
    for rev in ("latest", "v1"):
        row(f"4 · checkout {rev} into an empty directory", _time_rss(r, f"checkout_{rev}"), "—",
            _time_rss(r, "lance_read_v1") + " (read only)" if rev == "v1" and _m(r, "lance_read_v1") else "—",
            f"{_s(checkout_floor(r, rev))} (read {_s(_m(r, f'floor_read_objects_{rev}'))} + dump "
            f"{_s(_m(r, f'floor_dump_pickle_{rev}'))} + {_s(_m(r, f'floor_dump_json_{rev}'))})", f"checkout_{rev}")
    c = r["counts"]
    if "push_dir_first" in c:
        p = c["push_dir_first"]
        row("5 · first push (directory)", _time_rss(r, "push_dir_first") + f" · {_bytes(p['bytes'])}, {p['objects']} objects",
            floor=f"fsync write {_s(_m(r, 'floor_fsync_write'))}", ratio_text=_num(_div(p["bytes"], p["remote_bytes_expected"])) + " × of the repository")
    if "push_dir_incremental" in c:
        p = c["push_dir_incremental"]
        row("5 · incremental push (directory)", _time_rss(r, "push_dir_incremental") +
            f" · {_bytes(p['bytes'])}, {p['objects']} objects", floor=f"{_bytes(p['expected']['total'])} changed",
            key="push_dir_incremental_bytes")
        row("5 · no-op push (directory)", _time_rss(r, "push_dir_noop") + f" · {_bytes(c['push_dir_noop']['bytes'])}",
            key="push_dir_noop_bytes", ratio_text=_bytes(c["push_dir_noop"]["bytes"]))
    if "push_ia_first" in c:
        p = c["push_ia_first"]
        row("6 · first push (archive.org emulator)", _time_rss(r, "push_ia_first") +
            f" · {p['requests']} requests, {_bytes(p['bytes_in'])} up", key="push_ia_first_inventory",
            ratio_text=f"{p['inventory']} inventory request(s)")
        p = c["push_ia_incremental"]
        row("6 · incremental push (archive.org emulator)", _time_rss(r, "push_ia_incremental") +
            f" · {p['requests']} requests ({p['inventory']} inventory, {p['puts']} PUT), {_bytes(p['bytes_in'])} up",
            floor=f"{_bytes(p['expected']['total'])} changed", key="push_ia_incremental_bytes")
        row("6 · incremental push: inventory requests", "", key="push_ia_incremental_inventory")
        p = c["push_ia_noop"]
        row("6 · no-op push (archive.org emulator)", _time_rss(r, "push_ia_noop") + f" · {p['requests']} requests, {p['puts']} PUT",
            key="push_ia_noop_bytes", ratio_text=_bytes(p["bytes_in"]))
        p = c["clone_ia"]
        row("6 · clone (archive.org emulator)", _time_rss(r, "clone_ia") +
            f" · {p['requests']} requests, {_bytes(p['bytes_out'])} down",
            floor=f"blake3 {_s(_m(r, 'clone_verification'))}", key="clone_verification")
        row("6 · clone: content re-derivation (checkout's decode + content hash)", _s(_m(r, "clone_content_rederivation")),
            ratio_text=_num(_div(_m(r, "clone_content_rederivation"), _m(r, "clone_ia"))) + " of the clone time")
    row("7 · diff v1 v2", _time_rss(r, "diff"))
    row("7 · diff v1 v2 --ids", _time_rss(r, "diff_ids"))
    row("7 · verify", _time_rss(r, "verify"), floor=f"blake3 {_s(_m(r, 'floor_blake3_objects'))}",
        ratio_text=_num(_div(_m(r, "verify"), _m(r, "floor_blake3_objects"))) + " × blake3")
    row("7 · verify --deep", _time_rss(r, "verify_deep"))
    if "egds_v1" in c:
        row("compressed embedding column (v1)", _bytes(c["egds_v1"]["embedding_bytes"]),
            _bytes(c.get("seed", {}).get("embedding_bytes")), "", "", "embedding_bytes_vs_seed")
    head = ("scenario", "egds", "seed path", "Lance", "floor", "ratio", "target", "result")
    return _md(head, rows)


def _md(head: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def detail_tables(r: dict) -> str:
    c, out = r["counts"], []
    if "compression" in c:
        comp = c["compression"]
        raw = comp["raw_embedding_bytes"]
        rows = [(label, _bytes(v["embedding_bytes"]), f"{v['embedding_bytes'] / raw:.3f}", _bytes(v["text_bytes"]),
                 _bytes(v["file_bytes"]), _s(v["seconds"])) for label, v in comp["settings"].items()]
        if "seed" in c:
            rows.append(("seed path's files (list<float>, zstd-9, per month)", _bytes(c["seed"]["embedding_bytes"]),
                         f"{c['seed']['embedding_bytes'] / raw:.3f}", "", _bytes(c["seed"]["bytes"]), ""))
        rows.append(("egds v1 objects (per month)", _bytes(c["egds_v1"]["embedding_bytes"]),
                     f"{c['egds_v1']['embedding_bytes'] / raw:.3f}", "", _bytes(c["egds_v1"]["bytes"]), ""))
        out.append("Writer settings (one file of the whole table; sizes exact, times of one run):\n\n" + _md(
            ("setting", "embedding column", "÷ raw float32", "text column", "file", "write time"), rows))
    sizes = [("cache (embeddings.pkl + metadata.json)", _bytes(sum(c.get("cache_bytes", {}).values())))]
    if "egds_v1" in c:
        sizes.append(("egds v1 objects", _bytes(c["egds_v1"]["bytes"])))
    if "seed" in c:
        sizes.append(("seed path's export", _bytes(c["seed"]["bytes"])))
    if "lance_v1_bytes" in c:
        sizes += [("Lance dataset v1", _bytes(c["lance_v1_bytes"])), ("Lance dataset v1 + v2", _bytes(c["lance_v2_bytes"]))]
    out.append("Sizes on disk:\n\n" + _md(("what", "bytes"), sizes))
    t = []
    for key, label in (("push_ia_first", "first push"), ("push_ia_incremental", "incremental push"),
                       ("push_ia_noop", "no-op push"), ("clone_ia", "clone")):
        if key in c:
            p = c[key]
            t.append((label, p["requests"], p["inventory"], p["puts"], p["downloads"], _bytes(p["bytes_in"]),
                      _bytes(p["bytes_out"]), p["failed"]))
    if t:
        out.append("archive.org emulator requests (real `internetarchive` client):\n\n" + _md(
            ("operation", "requests", "inventory", "PUT", "downloads", "bytes up", "bytes down", "answered ≥ 400"), t) +
            "\n\n(A 404 for `egds/refs/main` is how a push learns that the item is new.)")
    if "clone_ia" in c and c["clone_ia"].get("hash_seconds"):
        h = c["clone_ia"]["hash_seconds"]
        out.append("Clone verification (time summed over calls, last run): " +
                   ", ".join(f"{k} {_s(v)}" for k, v in h.items()) + f"; clone {_s(_m(r, 'clone_ia'))}.")
    fl = [(name.removeprefix("floor_"), _s(e["median"]), _mib(e.get("rss"))) for name, e in r["m"].items()
          if name.startswith("floor_")]
    entry = r["m"].get("floor_load_pickle", {})
    if "rss_load_msgspec" in entry:
        fl.append(("load cache, peak RSS (pickle + msgspec / + stdlib json)", "",
                   f"{_mib(entry['rss_load_msgspec'])} / {_mib(entry['rss_load_stdlib'])}"))
    if "worker_baseline" in r["m"]:
        fl.append(("fresh worker process (interpreter + numpy), peak RSS", "", _mib(r["m"]["worker_baseline"]["rss"])))
    out.append("Floors (median):\n\n" + _md(("floor", "time", "peak RSS"), fl))
    return "\n\n".join(out)


def render(r: dict) -> str:
    cfg, mach = r["config"], r["machine"]
    lines = [
        f"**{cfg['rows']:,} rows × {cfg['dim']}** ({cfg['months']} months; new month = {cfg['new_rows']:,} rows), "
        f"median of {cfg['repeat']} after {cfg['warmup']} warm-up"
        f"{' (the two sides of each ratio interleaved)' if cfg.get('interleaved', True) else ' (each scenario on its own, to bound memory)'}"
        f"; peak RSS once, in a fresh process. "
        f"{mach['cpus']} CPUs ({mach['cpu_model']}), {mach['ram_gib']:.0f} GiB RAM, load average "
        f"{mach['loadavg_start'][0]:.1f} at start / {mach['loadavg_end'][0]:.1f} at end; run took "
        f"{r['elapsed_s']:.0f} s; code at {mach.get('code', 'unknown')}. Times are wall seconds; ratios compare "
        "figures of this run.",
        "",
        main_table(r),
        "",
        detail_tables(r),
    ]
    if r["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in r["notes"]]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items())]
    return "\n".join(lines)


def _code_version() -> str:
    """The commit the measured code is at (with `+changes` when the tree differs), or "unknown"."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" +changes" if dirty else "")


def machine_info() -> dict[str, Any]:
    meminfo = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            meminfo[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    model = "unknown"
    try:
        model = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for dist in ("egregora-ds", "numpy", "pyarrow", "polars", "pandas", "blake3", "msgspec", "internetarchive",
                 "pylance"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"cpus": os.cpu_count(), "cpu_model": model, "code": _code_version(), "ram_gib": meminfo.get("MemTotal", 0) / 2**30,
            "ram_available_gib": meminfo.get("MemAvailable", 0) / 2**30, "platform": platform.platform(),
            "loadavg_start": os.getloadavg(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions}


RESULTS_HEADER = """# Benchmark results

Generated by `python -m benchmarks --size SIZE --write-results` (do not edit by hand; method and noise margins in
[README.md](README.md)). Each section is replaced when its size is run again.
"""


def write_readme_table(path: Path, r: dict, command: str) -> None:
    """Replace the main table between the README's `<!-- benchmarks:SIZE -->` markers, if it has them."""
    size = r["config"]["size"]
    begin, end = f"<!-- benchmarks:{size} -->", f"<!-- /benchmarks:{size} -->"
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        return
    mach = r["machine"]
    section = (f"{begin}\n`{command}` on {mach['date'][:10]}, {mach['cpus']} CPUs, {mach['ram_gib']:.0f} GiB RAM "
               f"(median of {r['config']['repeat']}; the full output with the floors' parts is in "
               f"[benchmarks/RESULTS.md](benchmarks/RESULTS.md)):\n\n{main_table(r)}\n{end}")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(head + section + tail, encoding="utf-8")


def write_results(path: Path, r: dict, command: str) -> None:
    """Replace this size's section of RESULTS.md, keep the others."""
    size = r["config"]["size"]
    begin, end = f"<!-- size:{size} -->", f"<!-- /size:{size} -->"
    section = f"{begin}\n## {size} ({r['config']['rows']:,} rows) — {r['machine']['date']}\n\n`{command}`\n\n{render(r)}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
