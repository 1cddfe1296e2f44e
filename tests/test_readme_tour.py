"""README's "A short tour" runs as written on the demo's sample data (issue 9 acceptance): the bash block is
extracted from README.md and run by bash, line for line, in an empty directory.

The one substitution, made in the environment and not in the text: the archive.org lines (`ia:...` remote,
push, clone, pull) reach the test suite's archive.org emulator through `EGDS_IA_ENDPOINT` with test keys,
exactly as the README says a mirror or test server is reached; archive.org itself is not reachable here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_same_cache
from egregora_ds import Repository

README = Path(__file__).resolve().parent.parent / "README.md"


def tour_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## A short tour"):]
    match = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert match is not None, "the tour has no bash block"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_tour_runs_as_written_on_the_sample_data(tmp_path: Path, ia_env) -> None:
    work = tmp_path / "tour"
    work.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "80"}
    env.pop("EGDS_DEBUG", None)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", tour_block()], cwd=work, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    out = result.stdout

    # What the comments claim is what happened.
    assert "changed   2025-03" in out  # status after the edit names the edited month
    assert "Recorded v2" in out and "1 partitions written" in out  # only the changed month is written
    assert "text changed: 1800" in out  # diff --ids names the edited chunk
    assert "holds v1" in out and "A snapshot would be refused" in out  # status of the working cache at v1
    repo = Repository.open(work)
    assert [e.version for e in repo.log()] == [2, 1] and repo.log()[0].tags == ["release-2025"]
    assert repo.status().clean and repo.status().holds == 2  # `egds checkout latest` went back to v2
    assert repo.status(cache=work / "rag-today").clean  # @today is the latest version
    assert repo.config.model == "models/text-embedding-004"

    reference = tmp_path / "v1-reference"
    repo.checkout("v1", cache=reference)
    assert_same_cache(work / "rag-v1", reference)
    copy = Repository.open(work / "my-copy")
    assert copy.head() == repo.head() and copy.status().clean
    recent = Repository.open(work / "recent")
    assert recent.status().partial == ["2025-09", "2025-10"]
