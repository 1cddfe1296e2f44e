"""`scripts/demo.sh DIR` only ever deletes what it created (issue 9 item 9): a directory it did not make is
refused with nothing removed; an earlier run's directory loses only the demo's own files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.sh"


def run_demo(work: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the script with a `python` that fails at once: only its preparation of WORKDIR runs."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir(exist_ok=True)
    for tool in ("python", "egds"):
        (fake_bin / tool).write_text("#!/bin/sh\nexit 97\n")
        (fake_bin / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(DEMO), str(work)], capture_output=True, text=True, env=env, timeout=60)


def test_a_non_empty_directory_the_demo_did_not_make_is_refused_and_left_alone(tmp_path: Path) -> None:
    work = tmp_path / "my-project"
    (work / "src").mkdir(parents=True)
    (work / "src" / "precious.txt").write_text("keep me")
    (work / "cache").mkdir()  # even a name the demo uses is not the demo's without its marker
    result = run_demo(work, tmp_path)
    assert result.returncode == 2
    assert "was not made by this script; nothing was removed" in result.stderr
    assert (work / "src" / "precious.txt").read_text() == "keep me" and (work / "cache").is_dir()
    assert not (work / ".egds-demo").exists()


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_file_or_a_symlink_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / ".egds-demo").write_text("")  # a marker behind a symlink does not count
    work = tmp_path / "work"
    if kind == "file":
        work.write_text("data")
    else:
        work.symlink_to(target)
    assert run_demo(work, tmp_path).returncode == 2
    assert work.exists() and (target / ".egds-demo").exists()


def test_an_earlier_runs_directory_loses_only_the_demos_own_files(tmp_path: Path) -> None:
    work = tmp_path / "demo-out"
    for entry in (".egds/objects", "cache/rag", "original-v1", "restored-v1", "remote/egds", "clone/.egds"):
        (work / entry).mkdir(parents=True)
        (work / entry / "f").write_text("demo data")
    (work / ".egds-demo").write_text("")
    (work / "notes.txt").write_text("mine")  # something the user put there since
    result = run_demo(work, tmp_path)
    assert result.returncode == 97  # it went on to the first step (the fake python)
    assert sorted(p.name for p in work.iterdir()) == [".egds-demo", "notes.txt"]
    assert (work / "notes.txt").read_text() == "mine"


def test_a_new_or_empty_directory_is_used(tmp_path: Path) -> None:
    for work in (tmp_path / "new", tmp_path / "empty"):
        if work.name == "empty":
            work.mkdir()
        assert run_demo(work, tmp_path).returncode == 97
        assert (work / ".egds-demo").is_file()
