"""The `egds` command line end to end: every command, its --json shape, -C, and error output
(non-zero exit, one `egds: error:` line on stderr, never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import dir_tree, flip_byte, load_cache, make_chunks, make_embeddings, repo_tree, write_cache
from egregora_ds import Repository, __version__
from egregora_ds.cli import app

EGDS = Path(sys.executable).with_name("egds")


def egds(root: Path, *args: str, code: int = 0) -> Any:
    """Run `egds -C root ARGS` in-process; check the exit code; return the result."""
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def egds_json(root: Path, *args: str, code: int = 0) -> Any:
    return json.loads(egds(root, *args, "--json", code=code).stdout)


def error_line(root: Path, *args: str, code: int = 1) -> str:
    result = egds(root, *args, code=code)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egds: error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def same_cache(a: Path, b: Path) -> bool:
    pa_, ma, ia = load_cache(a)
    pb, mb, ib = load_cache(b)
    return np.array_equal(pa_["embeddings"], pb["embeddings"]) and ma == mb and ia == ib and pa_.keys() == pb.keys()


@pytest.fixture
def two_versions(tmp_path: Path) -> Path:
    """A repository made through the CLI: v1 = 60 chunks over 6 months, v2 edits one chunk and adds 5."""
    root = tmp_path / "proj"
    root.mkdir()
    egds(root, "init", "--model", "test-model")
    cache = root / "cache" / "rag"
    write_cache(cache, make_chunks(60), make_embeddings(60), index={"n": 60})
    egds(root, "snapshot", "-m", "first")
    chunks = make_chunks(60)
    chunks[10]["text"] = "edited"
    extra = make_chunks(5, months=1, seed=3)
    for i, chunk in enumerate(extra):
        chunk.update(chunk_id=100 + i, newsletter_date=f"2024-07-{i + 1:02d}")
    embeddings = np.vstack([make_embeddings(60), make_embeddings(5, seed=9)])
    embeddings[20] += 1
    write_cache(cache, chunks + extra, embeddings, index={"n": 65})
    egds(root, "snapshot", "-m", "second")
    return root


# ---- commands -------------------------------------------------------------------------------------


def test_init_creates_the_repository_with_the_given_settings(tmp_path):
    result = egds(tmp_path, "init", "--cache", "data/rag", "--partition", "quarter", "--model", "m-1")
    assert "Initialised" in result.stdout
    repo = Repository.open(tmp_path)
    assert (repo.config.cache, repo.config.partitioning, repo.config.model) == ("data/rag", "quarter", "m-1")
    for name in ("objects", "manifests", "refs/tags", "tmp", "config.json"):
        assert (tmp_path / ".egds" / name).exists()


def test_snapshot_with_a_message_records_a_version_and_says_so(tmp_path):
    egds(tmp_path, "init", "--model", "test-model")
    write_cache(tmp_path / "cache/rag", make_chunks(60), make_embeddings(60))
    result = egds(tmp_path, "snapshot", "-m", "first import")
    assert "Recorded v1" in result.stdout and "60 rows" in result.stdout
    assert Repository.open(tmp_path).log()[0].message == "first import"


def test_snapshot_json_has_version_id_created_rows_and_partition_counts(tmp_path):
    egds(tmp_path, "init", "--model", "test-model")
    write_cache(tmp_path / "cache/rag", make_chunks(60), make_embeddings(60))
    first = egds_json(tmp_path, "snapshot", "-m", "one")
    assert {"version", "id", "created", "rows", "partitions"} <= first.keys()
    assert first["version"] == 1 and first["created"] is True and first["rows"] == 60
    assert first["partitions"] == {"written": 6, "reused": 0}
    assert len(first["id"]) == 64
    chunks = make_chunks(60)
    chunks[-1]["text"] = "changed in the last month"
    write_cache(tmp_path / "cache/rag", chunks, make_embeddings(60))
    second = egds_json(tmp_path, "snapshot", "-m", "two")
    assert second["version"] == 2 and second["partitions"] == {"written": 1, "reused": 5}


def test_a_snapshot_of_an_unchanged_cache_says_nothing_changed_and_exits_0(two_versions):
    text = egds(two_versions, "snapshot", "-m", "again")
    assert "Nothing changed since v2" in text.stdout
    result = egds_json(two_versions, "snapshot")
    assert result["created"] is False and result["version"] == 2
    assert result["partitions"]["written"] == 0
    assert [e.version for e in Repository.open(two_versions).log()] == [2, 1]


def test_log_json_lists_versions_newest_first_with_their_fields(two_versions):
    log = egds_json(two_versions, "log")
    assert [e["version"] for e in log] == [2, 1]
    for key in ("version", "id", "parent", "created_at", "message", "rows", "partitions", "model", "dim"):
        assert all(key in e for e in log), key
    assert log[0]["parent"] == log[1]["id"] and log[1]["parent"] is None
    assert [e["message"] for e in log] == ["second", "first"]
    assert [e["rows"] for e in log] == [65, 60] and log[0]["partitions"] == 7
    assert log[0]["model"] == "test-model" and log[0]["dim"] == 16
    assert log[0]["created_at"] >= log[1]["created_at"]
    assert [e["version"] for e in egds_json(two_versions, "log", "-n", "1")] == [2]
    assert "v2" in egds(two_versions, "log").stdout


def test_show_v1_json_gives_the_id_and_the_manifest(two_versions):
    shown = egds_json(two_versions, "show", "v1")
    log = egds_json(two_versions, "log")
    assert shown["id"] == log[1]["id"]
    manifest = shown["manifest"]
    assert manifest["version"] == 1 and manifest["rows"] == 60 and manifest["dim"] == 16
    assert [p["key"] for p in manifest["partitions"]] == [f"2024-0{m}" for m in range(1, 7)]
    assert {"object", "content_hash", "rows", "bytes", "min_chunk_id", "max_chunk_id"} <= manifest["partitions"][0].keys()
    assert "2024-01" in egds(two_versions, "show", "v1").stdout


def test_a_tag_can_be_checked_out_into_another_cache(two_versions, tmp_path):
    v1_cache = tmp_path / "v1-cache"
    Repository.open(two_versions).checkout("v1", v1_cache)
    tagged = egds_json(two_versions, "tag", "release", "v1")
    assert tagged["tag"] == "release" and tagged["version"] == 1
    other = tmp_path / "other"
    result = egds(two_versions, "checkout", "release", "--cache", str(other))
    assert "Checked out v1" in result.stdout
    assert same_cache(other, v1_cache)
    assert egds_json(two_versions, "log")[1]["tags"] == ["release"]
    again = egds_json(two_versions, "checkout", "release", "--cache", str(other))
    assert again["already_current"] is True


def test_status_json_reports_a_clean_cache_and_then_the_changed_partitions(two_versions):
    status = egds_json(two_versions, "status")
    assert status["clean"] is True and status["version"] == 2
    for key in ("version", "id", "cache", "clean", "rows", "partitions", "index_changed", "extras_changed"):
        assert key in status
    chunks = load_cache(two_versions / "cache/rag")[1]["chunks"]
    chunks[0]["text"] = "edited after v2"
    (two_versions / "cache/rag/metadata.json").write_text(json.dumps({"chunks": chunks}), encoding="utf-8")
    status = egds_json(two_versions, "status")
    assert status["clean"] is False
    assert status["partitions"]["changed"] == ["2024-01"] and status["partitions"]["added"] == []
    assert "changed" in egds(two_versions, "status").stdout


def test_diff_json_has_partition_and_chunk_changes(two_versions):
    diff = egds_json(two_versions, "diff", "v1", "v2")
    assert set(diff["partitions"]) >= {"added", "removed", "changed"}
    assert set(diff["chunks"]) >= {"added", "removed", "text_changed", "embedding_changed"}
    assert diff["partitions"]["added"] == ["2024-07"] and diff["partitions"]["removed"] == []
    assert diff["partitions"]["changed"] == ["2024-02", "2024-03"]
    assert diff["chunks"] == {"added": 5, "removed": 0, "text_changed": 1, "embedding_changed": 1, "changed": 2,
                              "moved": 0, "fields": {"text": 1, "embedding": 1}}
    ids = egds_json(two_versions, "diff", "v1", "v2", "--ids")["ids"]
    assert ids == {"added": [100, 101, 102, 103, 104], "removed": [], "text_changed": [10], "embedding_changed": [20],
                   "changed": [10, 20], "moved": [], "fields": {"text": [10], "embedding": [20]}}


def test_verify_json_is_ok_on_a_good_repo_and_exits_1_with_the_problem_on_damage(two_versions):
    report = egds_json(two_versions, "verify")
    assert report["ok"] is True and report["problems"] == [] and report["manifests"] == 2
    assert "OK" in egds(two_versions, "verify", "--deep").stdout
    repo = Repository.open(two_versions)
    entry = repo.show("v1")[1].partitions[0]
    flip_byte(repo.store.object_path(entry.object, ".parquet"))
    report = egds_json(two_versions, "verify", code=1)
    assert report["ok"] is False and any(entry.object[:12] in p for p in report["problems"])
    text = egds(two_versions, "verify", code=1)
    assert entry.object[:12] in text.stderr and "problem" in text.stdout


def test_gc_dry_run_lists_and_deletes_nothing_then_gc_deletes(two_versions):
    repo = Repository.open(two_versions)
    repo.store.write_ref("main", repo.show("v1")[0])  # v2 becomes unreachable
    before = repo_tree(two_versions)
    dry = egds(two_versions, "gc", "--dry-run")
    assert "Would delete" in dry.stdout and "1 manifests" in dry.stdout
    assert repo_tree(two_versions) == before
    listed = egds_json(two_versions, "gc", "--dry-run")
    assert listed["dry_run"] is True and len(listed["manifests"]) == 1 and listed["objects"]
    done = egds_json(two_versions, "gc")
    assert done["objects"] == listed["objects"] and done["manifests"] == listed["manifests"]
    assert egds_json(two_versions, "verify")["ok"] is True


def test_checkout_refuses_to_overwrite_unsaved_work_unless_forced(two_versions):
    cache = two_versions / "cache/rag"
    write_cache(cache, make_chunks(61), make_embeddings(61))
    before = dir_tree(cache)
    line = error_line(two_versions, "checkout", "v1")
    assert "--force" in line and "snapshot" in line
    assert dir_tree(cache) == before
    assert egds_json(two_versions, "checkout", "v1", "--force")["version"] == 1
    assert len(load_cache(cache)[1]["chunks"]) == 60


def test_version_flag_prints_the_version(tmp_path):
    assert __version__ in egds(tmp_path, "--version").stdout


# ---- -C -------------------------------------------------------------------------------------------


def test_minus_C_works_from_another_directory_with_the_real_console_script(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(EGDS), "-C", str(project), *args], cwd=elsewhere, capture_output=True, text=True, timeout=60)
        assert proc.returncode == code, proc.stderr
        return proc

    run("init", "--model", "test-model")
    assert (project / ".egds").is_dir() and not (elsewhere / ".egds").exists()
    write_cache(project / "cache" / "rag", make_chunks(30), make_embeddings(30))
    assert json.loads(run("snapshot", "-m", "from elsewhere", "--json").stdout)["version"] == 1
    assert json.loads(run("log", "--json").stdout)[0]["message"] == "from elsewhere"
    # "Run as if egds was started in DIR": a relative --cache is relative to DIR, like git -C.
    run("checkout", "v1", "--cache", "exported")
    assert (project / "exported" / "embeddings.pkl").is_file()
    assert not (elsewhere / "exported").exists()
    assert json.loads(run("status", "--cache", "exported", "--json").stdout)["clean"] is True
    assert list(elsewhere.iterdir()) == []


def test_minus_C_finds_the_repository_from_a_subdirectory(two_versions):
    sub = two_versions / "cache"
    assert [e["version"] for e in egds_json(sub, "log")] == [2, 1]


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["show", "v9"], "no version 9"),
        (["checkout", "nosuchtag", "--cache", "x"], "nosuchtag"),
        (["diff", "v1", "v7"], "no version 7"),
        (["tag", "latest"], "invalid tag name"),
        (["tag", "v3", "v1"], "invalid tag name"),
        (["show", "@2025-13-01"], "2025-13-01"),
    ],
)
def test_errors_exit_non_zero_with_one_egds_error_line_and_no_traceback(two_versions, args, needle):
    before = repo_tree(two_versions)
    assert needle in error_line(two_versions, *args)
    assert repo_tree(two_versions) == before


def test_moving_a_tag_needs_force(two_versions):
    egds(two_versions, "tag", "release", "v1")
    assert "--force" in error_line(two_versions, "tag", "release", "v2")
    assert egds_json(two_versions, "tag", "release", "v2", "--force")["version"] == 2


def test_commands_outside_a_repository_fail_with_one_line(tmp_path):
    for command in (["log"], ["snapshot"], ["status"], ["verify"], ["gc"], ["checkout"]):
        assert "egds init" in error_line(tmp_path, *command)


def test_init_with_an_unknown_partitioning_is_a_usage_error_with_exit_2(tmp_path):
    assert "month, quarter or year" in error_line(tmp_path, "init", "--partition", "week", code=2)
    assert not (tmp_path / ".egds").exists()


def test_an_unexpected_exception_is_one_internal_error_line_unless_egds_debug_is_set(two_versions, monkeypatch):
    def broken(self, limit=None):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(Repository, "log", broken)
    monkeypatch.delenv("EGDS_DEBUG", raising=False)
    result = egds(two_versions, "log", code=70)
    assert result.stderr.startswith("egds: internal error: RuntimeError: simulated bug") and result.stderr.count("\n") == 1
    monkeypatch.setenv("EGDS_DEBUG", "1")
    result = CliRunner().invoke(app, ["-C", str(two_versions), "log"])
    assert isinstance(result.exception, RuntimeError)


def test_the_console_script_reports_errors_on_stderr_only(tmp_path):
    proc = subprocess.run([str(EGDS), "-C", str(tmp_path), "log"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("egds: error: ") and proc.stderr.count("\n") == 1  # never wrapped


def test_a_full_disk_during_a_snapshot_is_one_clear_line_and_the_repository_keeps_its_version(
    two_versions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from egregora_ds.store import local

    root = two_versions
    chunks = make_chunks(65)
    chunks[0]["text"] = "uma mudança"
    write_cache(root / "cache" / "rag", chunks, make_embeddings(65))
    before = repo_tree(root)

    def full_disk(path: Path, data: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(local, "atomic_write_bytes", full_disk)
    line = error_line(root, "snapshot", "-m", "disk fills up")
    assert "No space left on device: " in line and "free some space and run the command again" in line
    assert repo_tree(root) == before  # nothing was written, v2 is still the latest
    monkeypatch.undo()
    assert egds_json(root, "snapshot", "-m", "after cleaning up")["version"] == 3
