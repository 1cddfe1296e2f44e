"""Command line of the benchmark suite (``python -m benchmarks --help``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
README = Path(__file__).parent.parent / "README.md"
ONE_M_HEADROOM_GIB = 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="egds next to the seed path, Lance and the physical floors, in one run (issue 4).")
    p.add_argument("--size", choices=("small", "100k", "1m"), default="small",
                   help="small = 20k rows (CI), 100k, 1m (needs ~20 GB of free RAM)")
    p.add_argument("--rows", type=int, help="override the row count of --size (e.g. a few hundred for a smoke test)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--months", type=int, default=30)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per scenario (median reported); default 3")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs before them; default 1")
    p.add_argument("--json", type=Path, help="write the raw figures, targets and machine info here")
    p.add_argument("--gate", action="store_true",
                   help="exit 1 if a gated target misses by more than its noise margin (CI, at --size small)")
    p.add_argument("--write-results", action="store_true",
                   help=f"replace this size's section of {RESULTS.name} (and, for 100k, the README's table)")
    p.add_argument("--no-rss", dest="rss", action="store_false", help="skip the fresh-process peak-RSS runs")
    p.add_argument("--no-seed", dest="seed", action="store_false", default=None, help="skip the seed path")
    p.add_argument("--no-lance", dest="lance", action="store_false", default=None, help="skip Lance")
    p.add_argument("--sequential", dest="interleave", action="store_false", default=None,
                   help="run each scenario's repetitions back to back (the default above 300k rows) instead of "
                        "interleaving the two sides of each ratio")
    p.add_argument("--workdir", type=Path, help="where to build the temporary workspace (default: the system temp)")
    p.add_argument("--keep", action="store_true", help="keep the workspace (for profiling)")
    p.add_argument("--force", action="store_true", help="run 1m even when free RAM looks too small")
    p.add_argument("--quiet", action="store_true", help="print only the final tables")
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report
    from benchmarks.suite import run_suite

    args = build_parser().parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        print("--repeat must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    if args.size == "1m" and args.rows is None and not args.force:
        free = report.machine_info()["ram_available_gib"]
        if free < ONE_M_HEADROOM_GIB:
            print(f"--size 1m needs ~{ONE_M_HEADROOM_GIB} GiB of free RAM; {free:.1f} GiB is available now "
                  "(others are running?). Run it when the machine allows, or pass --force.", file=sys.stderr)
            return 2
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    r = run_suite(args.size if args.rows is None else None, rows=args.rows, dim=args.dim, months=args.months,
                  repeat=args.repeat, warmup=args.warmup, rss=args.rss, seed=args.seed, lance=args.lance,
                  interleave=args.interleave,
                  workdir=args.workdir, keep=args.keep, log=log)
    if args.rows is None:
        r["config"]["size"] = args.size
    r["targets"] = report.evaluate(r)
    failures = report.gate_failures(r)
    r["gate"] = {"requested": args.gate, "failures": failures}
    text = report.render(r)
    print(text)
    shown, skip = [], False
    for a in (argv if argv is not None else sys.argv[1:]):  # the command as RESULTS.md shows it: no output paths
        if skip or a == "--json" or a.startswith("--json="):
            skip = a == "--json" and not skip
            continue
        shown.append(shlex.quote(a))
    command = "python -m benchmarks " + " ".join(shown)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
    if args.write_results:
        report.write_results(RESULTS, r, command.strip())
        report.write_readme_table(README, r, command.strip())
    if args.gate:
        if failures:
            print("\nGATE FAILED:\n" + "\n".join(f"- {f}" for f in failures), file=sys.stderr)
            return 1
        print("\ngate: every gated target is met within its noise margin", file=sys.stderr)
    return 0
