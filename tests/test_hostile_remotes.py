"""The hostile-remote corpus (tests/hostile_remotes.py), each case cloned by the real `egds` CLI in a
child process under an address-space limit and a time limit: every case must end in one clean error
line naming the remote and the manifest or object (and its version where one is known), exit 1 or
2, leave no clone directory, and never print the content of a file it was not meant to read.

Cases marked `needs` wait for the manifest and Parquet validation another part of egds is adding;
they are strict xfails, so the day that validation lands they fail here until the mark is removed.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_remotes import CASES, Case, Honest, build_honest, make_case

EGDS = Path(sys.executable).with_name("egds")
ADDRESS_SPACE = 1 << 30  # 1 GiB: the interpreter, pyarrow and every thread stack fit; a bomb does not
TIME_LIMIT = 60.0  # seconds; a clean case takes about one
ADVICE = re.compile(r"\b(run|re-push|report|upgrade|replace|try|check|push|fix|restore)\b", re.IGNORECASE)
#: A few cases run in the fast default subset; the whole corpus is marked slow (one process each).
FAST = {"ref-is-a-symlink-to-dev-zero", "ref-is-a-fifo", "chain-claims-a-billion-versions", "object-is-truncated"}


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Honest:
    return build_honest(tmp_path_factory.mktemp("honest"))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def clone_in_a_child(url: str, target: Path) -> tuple[int | str, str, str, float]:
    start = time.monotonic()
    try:
        done = subprocess.run([str(EGDS), "clone", url, str(target)], capture_output=True, text=True,
                              timeout=TIME_LIMIT, preexec_fn=_limit_memory, cwd=target.parent)
    except subprocess.TimeoutExpired:
        return "timeout", "", "", time.monotonic() - start
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def _param(item: Case) -> object:
    marks = [] if item.name in FAST else [pytest.mark.slow]
    if item.needs:
        marks.append(pytest.mark.xfail(strict=True, reason=item.needs))
    return pytest.param(item, id=item.name, marks=marks)


@pytest.mark.parametrize("item", [_param(item) for item in CASES])
def test_a_hostile_remote_ends_the_clone_in_one_clean_error_line_within_memory_and_time_limits(
    honest: Honest, item: Case, tmp_path: Path
) -> None:
    remote, needles = make_case(honest, item, tmp_path / "remote")
    target = tmp_path / "clone"
    code, stdout, stderr, _ = clone_in_a_child(remote.url, target)
    assert code in (1, 2), f"exit {code}: {stderr.strip()[:500]}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egds: error: "), stderr
    line = lines[0]
    assert "Traceback" not in stdout + stderr
    assert remote.url in line, f"the error does not name the remote: {line}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line}"
    assert ADVICE.search(line), f"the error does not say what to do: {line}"
    assert "TOPSECRET" not in stdout + stderr, "a file outside the remote was read into the message"
    assert not target.exists(), "a failed clone must leave no directory"


def test_the_corpus_covers_what_the_fault_campaign_listed() -> None:
    names = {item.name for item in CASES}
    listed = {
        "object-without-an-embedding-column", "object-with-the-wrong-dimension", "manifest-row-order-does-not-add-up",
        "manifest-claims-ten-billion-rows", "manifest-dtype-is-object", "extras-are-not-an-object",
        "chain-cycle-through-a-mislabelled-manifest", "chain-names-itself-as-parent", "chain-skips-a-version",
        "ref-names-a-missing-manifest", "object-is-truncated", "object-is-larger-than-its-manifest-says",
        "object-hashes-right-but-is-not-parquet", "manifest-format-is-unknown", "object-size-in-the-manifest-is-huge",
        "manifest-names-an-object-by-a-path", "ref-is-a-symlink-to-dev-zero", "ref-is-a-fifo",
        "ref-is-a-symlink-to-a-local-file",
    }
    assert listed <= names, sorted(listed - names)
    assert len({item.name for item in CASES}) == len(CASES), "case names must be unique"
