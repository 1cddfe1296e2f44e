"""The noise study behind the gate margins: spread of every target's ratio over repeated runs.

    for i in 1 2 3 4 5 6; do python -m benchmarks --size small --json run-$i.json; done
    python -m benchmarks.margins run-*.json

For each target: min / median / max of its ratio over the runs, the worst relative excursion from the median
(``spread``), the margin the gate uses now, and whether every run would have passed the gate.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from benchmarks import report


def study(paths: list[Path]) -> str:
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    rows = []
    for t in report.TARGETS:
        ratios = [e["ratio"] for r in runs for e in report.evaluate(r, [t]) if e["ratio"] is not None]
        if not ratios:
            rows.append((t.key, "—", "—", "—", "—", "—", "—", "—"))
            continue
        med = statistics.median(ratios)
        spread = max(abs(x - med) for x in ratios) / med if med else 0.0
        passes = sum(e["gate_ok"] for r in runs for e in report.evaluate(r, [t]) if e["ratio"] is not None)
        rows.append((t.key, report._num(min(ratios)), report._num(med), report._num(max(ratios)), f"{spread:.0%}",
                     f"{t.show_limit()}", f"{t.margin:.0%}" if t.gated else "not gated",
                     f"{passes}/{len(ratios)}" + ("" if t.gated else " (would)")))
    loads = [r["machine"]["loadavg_start"][0] for r in runs]
    head = f"{len(runs)} runs at {runs[0]['config']['rows']:,} rows; load average at start {min(loads):.1f}-{max(loads):.1f}\n\n"
    return head + report._md(("target", "min", "median", "max", "spread", "target", "margin", "gate passes"), rows)


if __name__ == "__main__":
    print(study([Path(p) for p in sys.argv[1:]]))
