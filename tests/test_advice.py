"""Every error's advice is executable as written (issue 9 acceptance): each test provokes a user-facing
error through the CLI, takes the `egds ...` commands the message suggests in backticks, runs them exactly as
written (a NAME-like placeholder filled in), and checks that they lead where the message says. Every
`--option` a message tells the user to pass must be an option of the command that printed it.

(The model-change messages are followed in test_config.py, the newer-than-main one in test_revert_safety.py.)"""

from __future__ import annotations

import threading

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import advised_commands, make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.cli import app

INDEX = {"newsletters": 6}
COMMANDS = typer.main.get_command(app)


def egds(root: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def refused(root: Path, *args: str, code: int) -> str:
    """The one error line a command prints; every --option it tells the user to pass must exist."""
    result = egds(root, *args, code=code)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egds: error: "), result.stderr
    check_options_exist(args, lines[0])
    return lines[0]


def check_options_exist(args: tuple[str, ...], message: str) -> None:
    command = COMMANDS.commands[args[0]]  # type: ignore[attr-defined]
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    outside = re.sub(r"`[^`]*`", "", message)  # options inside backticks are checked by running them
    for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", outside):
        assert option in known, f"{message!r} names {option}, which `egds {args[0]}` does not have"


def follow(root: Path, message: str, *, only: int | None = None, **placeholders: str) -> list[Any]:
    """Run the message's commands (or only the `only`-th) exactly as written."""
    commands = advised_commands(message)
    assert commands, f"no command to follow in {message!r}"
    chosen = commands if only is None else [commands[only]]
    return [egds(root, *[placeholders.get(a, a) for a in args]) for args in chosen]


def edit(repo: Repository, chunk: int, text: str, rows: int = 60) -> None:
    chunks = make_chunks(rows)
    chunks[chunk]["text"] = text
    write_cache(repo.cache_path, chunks, make_embeddings(rows), index=INDEX)


@pytest.fixture
def two_versions(filled_repo: Repository) -> Repository:
    edit(filled_repo, 3, "second")
    filled_repo.snapshot("v2")
    return filled_repo


def test_outside_a_repository_the_advice_creates_one(tmp_path: Path) -> None:
    message = refused(tmp_path, "log", code=1)
    follow(tmp_path, message)  # `egds init`
    assert egds(tmp_path, "log").stdout.startswith("No versions yet")


def test_no_versions_yet_the_advice_records_one(repo: Repository) -> None:
    write_cache(repo.cache_path, make_chunks(10), make_embeddings(10), index=INDEX)
    message = refused(repo.root, "show", code=1)
    follow(repo.root, message)  # `egds snapshot`
    assert "v1" in egds(repo.root, "show").stdout


def test_an_unknown_version_points_at_the_log_that_lists_the_real_ones(two_versions: Repository) -> None:
    message = refused(two_versions.root, "show", "v9", code=1)
    (listing,) = follow(two_versions.root, message)  # `egds log`
    assert "v2" in listing.stdout and "v1" in listing.stdout


def test_unsaved_work_the_advice_saves_it_and_the_checkout_then_proceeds(two_versions: Repository) -> None:
    edit(two_versions, 50, "unsaved work")
    message = refused(two_versions.root, "checkout", "v1", "--cache", str(two_versions.cache_path), code=1)
    follow(two_versions.root, message)  # `egds snapshot`
    assert two_versions.log()[0].version == 3
    egds(two_versions.root, "checkout", "v2")


def test_a_snapshot_of_an_older_version_either_piece_of_advice_leads_somewhere_correct(two_versions: Repository) -> None:
    root = two_versions.root
    egds(root, "checkout", "v1")
    message = refused(root, "snapshot", code=2)
    follow(root, message, only=0)  # `egds checkout latest`
    assert two_versions.status().clean and two_versions.status().holds == 2
    egds(root, "checkout", "v1")
    message = refused(root, "snapshot", code=2)
    follow(root, message, only=1)  # `egds snapshot --revert`
    _, v1 = two_versions.show("v1")
    _, v3 = two_versions.show("v3")
    assert v3.partitions == v1.partitions and two_versions.status().clean


def test_edits_on_an_older_version_either_piece_of_advice_leads_somewhere_correct(two_versions: Repository) -> None:
    root = two_versions.root
    egds(root, "checkout", "v1")
    edit(two_versions, 50, "edit on v1")  # the cache now is v1 with June edited; v2's January edit is lacking
    message = refused(root, "snapshot", code=2)
    follow(root, message, only=1)  # `egds checkout latest --force`
    assert two_versions.status().clean and two_versions.status().holds == 2
    egds(root, "checkout", "v1")
    edit(two_versions, 50, "edit on v1")
    message = refused(root, "snapshot", code=2)
    follow(root, message, only=0)  # `egds snapshot --revert`
    assert two_versions.log()[0].version == 3 and two_versions.status().clean


def test_an_emptied_cache_either_piece_of_advice_leads_somewhere_correct(two_versions: Repository) -> None:
    root = two_versions.root
    write_cache(two_versions.cache_path, [], np.zeros((0, 16), np.float32), index=INDEX)
    message = refused(root, "snapshot", code=2)
    assert "holds no chunks, but v2 has 60 rows" in message
    follow(root, message, only=1)  # `egds checkout latest --force`
    assert two_versions.status().clean and two_versions.status().rows == 60
    write_cache(two_versions.cache_path, [], np.zeros((0, 16), np.float32), index=INDEX)
    assert "holds no chunks" in (two_versions.status().snapshot_refusal or "")
    follow(root, refused(root, "snapshot", code=2), only=0)  # `egds snapshot --allow-empty`
    assert two_versions.log()[0].rows == 0


def test_a_partial_cache_the_advice_restores_the_full_one(two_versions: Repository, tmp_path: Path) -> None:
    two_versions.remote_add("origin", str(tmp_path / "remote"))
    two_versions.push("origin")
    clone = tmp_path / "partial"
    egds(tmp_path, "clone", str(tmp_path / "remote"), str(clone), "--partitions", "2024-06")
    write_cache(clone / "cache" / "rag", make_chunks(60)[50:], make_embeddings(60)[50:] * 2, index=INDEX)
    message = refused(clone, "snapshot", code=2)
    follow(clone, message)  # `egds checkout v2 --force`
    assert Repository.open(clone).status().clean


def test_a_missing_cache_the_advice_points_egds_at_it(two_versions: Repository) -> None:
    root = two_versions.root
    (root / "cache" / "rag").rename(root / "pipeline-cache")
    message = refused(root, "snapshot", code=1)
    follow(root, message, PATH="pipeline-cache")  # `egds config cache PATH`
    assert Repository.open(root).status().clean


def test_a_held_lock_says_to_wait_and_the_same_command_then_succeeds(two_versions: Repository) -> None:
    edit(two_versions, 50, "waiting")
    # Another writer holds the lock: a thread of its own stands in for another process (the lock is
    # re-entrant only within the thread that holds it).
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with two_versions.store.locked():
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        message = refused(two_versions.root, "snapshot", code=1)
    finally:
        release.set()
        holder.join(30)
    assert "wait for it to finish and try again" in message
    egds(two_versions.root, "snapshot")
    assert two_versions.log()[0].version == 3


def test_nonfinite_vectors_the_option_the_message_names_records_them(two_versions: Repository) -> None:
    embeddings = make_embeddings(60)
    embeddings[7, 0] = np.nan
    write_cache(two_versions.cache_path, make_chunks(60), embeddings, index=INDEX)
    message = refused(two_versions.root, "snapshot", code=1)
    assert "--allow-nonfinite" in message
    egds(two_versions.root, "snapshot", "--allow-nonfinite")
    assert two_versions.log()[0].version == 3


def test_an_existing_tag_the_option_the_message_names_moves_it(two_versions: Repository) -> None:
    egds(two_versions.root, "tag", "stable", "v1")
    message = refused(two_versions.root, "tag", "stable", "v2", code=1)
    assert "--force" in message
    egds(two_versions.root, "tag", "stable", "v2", "--force")
    assert two_versions.resolve("stable")[0] == two_versions.head()


def test_a_setting_that_does_not_exist_the_advice_lists_those_that_do(two_versions: Repository) -> None:
    message = refused(two_versions.root, "config", "colour", code=2)
    (listing,) = follow(two_versions.root, message)  # `egds config`
    assert "model = test-model" in listing.stdout


def test_a_damaged_object_the_advice_names_the_damage(two_versions: Repository) -> None:
    _, v1 = two_versions.show("v1")
    target = two_versions.store.objects_dir / v1.partitions[0].object[:2] / f"{v1.partitions[0].object}.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    message = refused(two_versions.root, "checkout", "v1", "--cache", "elsewhere", code=1)
    commands = advised_commands(message)
    assert ["verify"] in commands
    report = egds(two_versions.root, "verify", code=1)  # it lists the damage and exits 1, as verify does
    assert v1.partitions[0].object[:12] in report.stdout + report.stderr
