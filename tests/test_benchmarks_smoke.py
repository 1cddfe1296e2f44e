"""The benchmark harness runs end to end on a tiny cache (no timing is asserted: see benchmarks/README.md)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import report
from benchmarks.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One CLI run at 240 rows x 16 dims over 4 months (a few seconds: seed path, Lance, emulator included)."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "figures.json"
    code = main(["--rows", "240", "--dim", "16", "--months", "4", "--repeat", "1", "--warmup", "0", "--no-rss",
                 "--json", str(out), "--workdir", str(tmp), "--quiet"])
    return code, json.loads(out.read_text(encoding="utf-8")), tmp


def test_the_cli_exits_zero_and_leaves_no_workspace_behind(run):
    code, _, tmp = run
    assert code == 0
    assert [p.name for p in tmp.iterdir()] == ["figures.json"]


def test_every_scenario_of_the_issue_is_measured(run):
    _, r, _ = run
    for name in ("snapshot_full", "snapshot_append", "snapshot_edit", "snapshot_delete", "snapshot_noop_stamped",
                 "snapshot_noop_parse", "checkout_latest", "checkout_v1", "push_dir_first", "push_dir_incremental",
                 "push_dir_noop", "push_ia_first", "push_ia_incremental", "push_ia_noop", "clone_ia", "diff",
                 "diff_ids", "verify", "verify_deep", "seed_export", "floor_load_pickle", "floor_write_pyarrow",
                 "floor_write_polars", "floor_fsync_write", "floor_blake3_objects"):
        entry = r["m"][name]
        assert len(entry["times"]) == 1 and entry["median"] >= 0, name
    assert r["config"]["rows"] == 240 and r["machine"]["cpus"] >= 1 and "pyarrow" in r["machine"]["versions"]


def test_exact_figures_push_only_what_changed_and_list_the_item_once(run):
    _, r, _ = run
    c = r["counts"]
    assert c["push_dir_incremental"]["bytes"] == c["push_dir_incremental"]["expected"]["total"]
    assert c["push_dir_noop"]["bytes"] == 0 and c["push_ia_noop"]["puts"] == 0
    # One listing to plan, one to see the uploads listed before the ref moves (the emulator lists at once).
    assert c["push_ia_first"]["inventory"] == 2 and c["push_ia_incremental"]["inventory"] == 2
    assert c["push_ia_incremental"]["bytes_in"] == c["push_ia_incremental"]["expected"]["total"]
    assert c["clone_ia"]["rows"] == 240 + 240 // 4 - 1  # base + a new month - one deleted chunk
    assert c["egds_v1"]["embedding_bytes"] > 0 and c["seed"]["embedding_bytes"] > 0


def test_every_target_is_evaluated_and_the_table_names_them(run):
    _, r, _ = run
    keys = {t.key for t in report.TARGETS}
    assert {e["key"] for e in r["targets"]} == keys
    assert all(e["ratio"] is not None for e in r["targets"] if e["key"] not in {"snapshot_vs_seed_rss", "snapshot_vs_load_rss"})
    text = report.render(r)
    assert text.count("\n| ") > 20 and "| scenario | egds | seed path | Lance | floor | ratio | target | result |" in text


def _fake(ratio_of: dict[str, float]) -> dict:
    """Results whose targets evaluate to the given ratios (only what the gate reads)."""
    return {"targets": [{"key": k, "ratio": v, "gated": True, "met": None, "gate_ok": None} for k, v in ratio_of.items()]}


def test_the_gate_allows_the_noise_margin_and_no_more():
    t = next(t for t in report.TARGETS if t.key == "incremental_append")
    assert t.gated and t.margin > 0
    inside, outside = t.limit * (1 + t.margin / 2), t.limit * (1 + t.margin) * 1.01
    r = {"targets": report.evaluate({"m": {}, "counts": {}}, [t])}
    assert r["targets"][0]["ratio"] is None and report.gate_failures(r) == []  # not measured: not a failure
    for ratio, fails in ((inside, False), (outside, True)):
        fake = type(t)(**{**t.__dict__, "ratio": lambda _r, x=ratio: x})
        r = {"targets": report.evaluate({}, [fake])}
        assert r["targets"][0]["met"] is False
        assert bool(report.gate_failures(r)) is fails
    exact = next(t for t in report.TARGETS if t.key == "push_dir_noop_bytes")
    one_byte = type(exact)(**{**exact.__dict__, "ratio": lambda _r: 1})
    assert report.gate_failures({"targets": report.evaluate({}, [one_byte])})  # exact figures have no margin
    at_least = next(t for t in report.TARGETS if t.op == ">=")
    low = type(at_least)(**{**at_least.__dict__, "margin": 0.2, "ratio": lambda _r: at_least.limit / 1.1})
    assert report.evaluate({}, [low])[0]["gate_ok"] is True  # >= targets: limit / (1 + margin)
    lower = type(at_least)(**{**at_least.__dict__, "margin": 0.2, "ratio": lambda _r: at_least.limit / 1.3})
    assert report.evaluate({}, [lower])[0]["gate_ok"] is False
    ungated = next(t for t in report.TARGETS if not t.gated)
    missed = type(ungated)(**{**ungated.__dict__, "ratio": lambda _r: math.inf if ungated.op == "<=" else 0.0})
    assert report.gate_failures({"targets": report.evaluate({}, [missed])}) == []  # reported, never gated


def test_results_md_keeps_the_other_sizes_sections(tmp_path, run):
    _, r, _ = run
    path = tmp_path / "RESULTS.md"
    for size in ("100k", "1m", "100k"):
        report.write_results(path, {**r, "config": {**r["config"], "size": size}}, f"python -m benchmarks --size {size}")
    text = path.read_text(encoding="utf-8")
    assert text.count("<!-- size:100k -->") == 1 and text.count("<!-- size:1m -->") == 1
    assert text.index("<!-- size:100k -->") < text.index("<!-- size:1m -->")
