"""What the CLI prints (issue 9 items 7 and 9): every user-supplied string (messages, tags, paths, remote
URLs, model names, revisions) is printed verbatim by every command, never read as rich markup or emoji
codes, never wrapped or cut to a terminal width; control characters are shown escaped so one record stays
one line. `log -n` is git-like."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds.cli import app, printable

EGDS = Path(sys.executable).with_name("egds")
MARKUP = "fix [/] separator [wip] [bold red]loud[/bold red] :smile: [link=https://x.test]y[/link] \\[esc]"
CONTROL = "bell\x07 esc\x1b[31mred\x1b[0m tab\tnew\nline \u202eexe.txt"
CONTROL_SHOWN = "bell\\x07 esc\\x1b[31mred\\x1b[0m tab\\tnew\\nline \\u202eexe.txt"


def egds(root: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture
def marked_up(tmp_path: Path) -> Path:
    """A repository whose every user string looks like rich markup: model, cache path, message."""
    root = tmp_path / "proj"
    root.mkdir()
    egds(root, "init", "--model", MARKUP, "--cache", "cache/[old]")
    write_cache(root / "cache" / "[old]", make_chunks(30, months=3), make_embeddings(30), index={"n": 30})
    egds(root, "snapshot", "-m", MARKUP)
    egds(root, "tag", "release-1.0")
    return root


def test_every_command_prints_markup_looking_user_text_verbatim(marked_up: Path, tmp_path: Path) -> None:
    root = marked_up
    cache = str((root / "cache" / "[old]").resolve())
    assert f"model = {MARKUP}\n" in egds(root, "config").stdout
    log = egds(root, "log").stdout
    assert MARKUP in log and "release-1.0" in log
    show = egds(root, "show", "release-1.0").stdout
    assert f"message  {MARKUP}\n" in show and f"model    {MARKUP} (dim 16" in show
    assert egds(root, "config", "model").stdout == MARKUP + "\n"
    assert f"Cache {cache} matches v1" in egds(root, "status").stdout
    copy = str((root / "copy[old]").resolve())
    assert f"into {copy}: 30 rows" in egds(root, "checkout", "v1", "--cache", "copy[old]").stdout
    assert f"Cache {copy} matches v1" in egds(root, "status", "--cache", "copy[old]").stdout
    assert "(release-1.0 (" not in egds(root, "diff", "v1", "release-1.0").stdout
    remote = str((tmp_path / "remote[b]x[/b]").resolve())
    assert f"Added remote bk: {remote}" in egds(root, "remote", "add", "bk", str(tmp_path / "remote[b]x[/b]")).stdout
    assert egds(root, "remote", "list").stdout == f"bk\t{remote}\n"
    assert "Pushed v1 to bk" in egds(root, "push", "bk").stdout
    cloned = egds(tmp_path, "clone", remote, "clone[1]").stdout
    assert f"Cloned {remote} into {(tmp_path / 'clone[1]').resolve()}: v1" in cloned
    assert MARKUP in egds(tmp_path / "clone[1]", "log").stdout
    assert f"Removed remote bk ({remote})" in egds(root, "remote", "remove", "bk").stdout


def test_an_init_message_prints_the_cache_and_model_as_given(tmp_path: Path) -> None:
    out = egds(tmp_path, "init", "--cache", "[red]c[/red]", "--model", ":rocket: [b]m[/b]").stdout
    assert "(cache [red]c[/red], monthly partitions, model :rocket: [b]m[/b])" in out


def test_control_characters_are_shown_escaped_and_keep_one_record_on_one_line(marked_up: Path) -> None:
    root = marked_up
    write_cache(root / "cache" / "[old]", make_chunks(31, months=3), make_embeddings(31), index={"n": 31})
    egds(root, "snapshot", "-m", CONTROL)
    log = egds(root, "log").stdout
    assert "\x1b" not in log and "\x07" not in log and "\u202e" not in log
    lines = log.splitlines()
    assert len(lines) == 3 and lines[1].endswith(CONTROL_SHOWN)
    assert f"message  {CONTROL_SHOWN}\n" in egds(root, "show").stdout
    assert json.loads(egds(root, "log", "--json").stdout)[0]["message"] == CONTROL  # JSON is exact
    error = egds(root, "show", "\x1b[2J\n", code=1).stderr
    assert error.count("\n") == 1 and "\x1b" not in error


def test_printable_escapes_only_what_a_terminal_would_act_on() -> None:
    assert printable("ação 🚀 [b] :smile: \\n") == "ação 🚀 [b] :smile: \\n"
    assert printable("a\nb\tc\rd\x00e\x7f\x85\u2028\u202e\u2066\udcff") == (
        "a\\nb\\tc\\rd\\x00e\\x7f\\x85\\u2028\\u202e\\u2066\\udcff"
    )


def test_tags_show_in_log(marked_up: Path) -> None:
    egds(marked_up, "tag", "second-name")
    header, row = egds(marked_up, "log").stdout.splitlines()
    assert header.split()[:7] == ["version", "id", "created", "(UTC)", "rows", "parts", "tags"]
    assert "release-1.0, second-name" in row


def test_log_is_never_wrapped_or_cut_when_piped(marked_up: Path) -> None:
    root = marked_up
    long_message = "a long message " * 30 + "END"
    write_cache(root / "cache" / "[old]", make_chunks(32, months=3), make_embeddings(32), index={"n": 32})
    egds(root, "snapshot", "-m", long_message)
    env = {**os.environ, "COLUMNS": "40"}
    piped = subprocess.run([str(EGDS), "-C", str(root), "log"], capture_output=True, text=True, env=env, timeout=120)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert len(lines) == 3 and lines[1].endswith(long_message)
    show = subprocess.run([str(EGDS), "-C", str(root), "show"], capture_output=True, text=True, env=env, timeout=120)
    assert f"message  {long_message}\n" in show.stdout


# ---- log -n -------------------------------------------------------------------------------------------------


def test_log_n_zero_prints_nothing_and_succeeds(marked_up: Path) -> None:
    assert egds(marked_up, "log", "-n", "0").stdout == ""
    assert json.loads(egds(marked_up, "log", "-n", "0", "--json").stdout) == []


def test_log_n_negative_is_refused_with_one_line(marked_up: Path) -> None:
    result = egds(marked_up, "log", "-n", "-1", code=2)
    assert result.stderr.strip() == "egds: error: -n/--limit must be 0 or more, not -1" and result.stdout == ""


def test_log_n_one_shows_the_newest_only_and_an_empty_repository_says_so(marked_up: Path, tmp_path: Path) -> None:
    write_cache(marked_up / "cache" / "[old]", make_chunks(31, months=3), make_embeddings(31), index={"n": 31})
    egds(marked_up, "snapshot", "-m", "second")
    lines = egds(marked_up, "log", "-n", "1").stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("v2 ")
    empty = tmp_path / "empty"
    empty.mkdir()
    egds(empty, "init")
    assert egds(empty, "log").stdout == "No versions yet; run `egds snapshot`.\n"


def test_status_of_another_cache_does_not_advise_a_snapshot_that_would_record_a_different_one(marked_up: Path) -> None:
    root = marked_up
    egds(root, "checkout", "v1", "--cache", "other")
    write_cache(root / "other", make_chunks(29, months=3), make_embeddings(29), index={"n": 29})
    text = egds(root, "status", "--cache", "other").stdout
    assert "Run `egds snapshot` to record" not in text
    assert "`egds snapshot` records the repository's own cache, not this one" in text
    assert json.loads(egds(root, "status", "--cache", "other", "--json").stdout)["snapshot_refusal"] is None
