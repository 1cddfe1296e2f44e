"""`egds config` and the model name (issue 9 item 4): a model change becomes the repository's default in the
same step, every model message's advice, followed literally, records the right model, and the settings a
user may change are listed, shown and set atomically (CLI, API and MCP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import advised_commands, make_chunks, make_embeddings, repo_tree, write_cache
from egregora_ds import Repository
from egregora_ds.cli import app

INDEX = {"newsletters": 6}


def egds(root: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def error(root: Path, *args: str, code: int) -> str:
    result = egds(root, *args, code=code)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egds: error: "), result.stderr
    return lines[0]


def run_advice(root: Path, message: str, **placeholders: str) -> list[Any]:
    """Run every command the message suggests, as written (NAME-like placeholders filled in)."""
    results = []
    for args in advised_commands(message):
        results.append(egds(root, *[placeholders.get(a, a) for a in args]))
    return results


def latest(root: Path) -> Any:
    return Repository.open(root).show()[1]


def new_dimension(repo: Repository, dim: int = 8, edit: str | None = None) -> None:
    chunks = make_chunks(60)
    if edit is not None:
        chunks[0]["text"] = edit
    write_cache(repo.cache_path, chunks, make_embeddings(60, dim=dim, seed=1), index=INDEX)


# ---- the model sticks no more ---------------------------------------------------------------------------


def test_after_a_model_change_plain_snapshots_record_the_new_model(filled_repo):
    root = filled_repo.root
    new_dimension(filled_repo)
    egds(root, "snapshot", "--new-model", "--model", "models/gemini-embedding-001", "-m", "new model")
    assert Repository.open(root).config.model == "models/gemini-embedding-001"
    assert "model = models/gemini-embedding-001" in egds(root, "config").stdout
    new_dimension(filled_repo, edit="next day")
    egds(root, "snapshot", "-m", "routine")  # before the fix: refused, and its advice recorded the old name
    v3 = latest(root)
    assert (v3.version, v3.model, v3.dim) == (3, "models/gemini-embedding-001", 8)


def test_a_new_dimension_without_new_model_gives_advice_that_records_the_named_model(filled_repo):
    root = filled_repo.root
    new_dimension(filled_repo)
    message = error(root, "snapshot", code=1)
    assert "`egds snapshot --new-model --model NAME`" in message
    run_advice(root, message, NAME="models/other")
    v2 = latest(root)
    assert (v2.version, v2.model, v2.dim) == (2, "models/other", 8)
    assert Repository.open(root).config.model == "models/other"


def test_new_model_without_a_name_is_refused_rather_than_recording_the_old_name_with_a_new_dimension(filled_repo):
    root = filled_repo.root
    new_dimension(filled_repo)
    before = repo_tree(root)
    message = error(root, "snapshot", "--new-model", code=1)
    assert "the model name would stay 'test-model'" in message
    assert repo_tree(root) == before
    commands = advised_commands(message)
    assert ["snapshot", "--new-model", "--model", "NAME"] in commands
    # The same model at a new dimension (an adjustable-size model) is recorded when named explicitly.
    egds(root, "snapshot", "--new-model", "--model", "test-model")
    assert (latest(root).model, latest(root).dim) == ("test-model", 8)


def test_a_configured_model_that_differs_from_the_latest_gives_two_pieces_of_advice_each_correct(filled_repo, tmp_path):
    root = filled_repo.root
    egds(root, "config", "model", "models/renamed")
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61), index=INDEX)  # same dimension
    message = error(root, "snapshot", code=1)
    assert "`egds snapshot --new-model`" in message and "`egds config model test-model`" in message
    first, second = advised_commands(message)
    # Either the model changed: record it under the configured name...
    egds(root, *first)
    assert (latest(root).version, latest(root).model) == (2, "models/renamed")
    # ...or the configuration was wrong: put it back and the next version keeps the latest's name.
    egds(root, "config", "model", "test-model")
    message = error(root, "snapshot", code=1)  # v2 is models/renamed now, config test-model: asked again
    egds(root, *advised_commands(message)[1])  # `egds config model models/renamed`
    write_cache(filled_repo.cache_path, make_chunks(62), make_embeddings(62), index=INDEX)
    egds(root, "snapshot")
    assert (latest(root).version, latest(root).model) == (3, "models/renamed")


def test_an_explicit_other_model_without_new_model_is_refused_with_the_exact_command(filled_repo):
    root = filled_repo.root
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61), index=INDEX)
    message = error(root, "snapshot", "--model", "model with spaces", code=1)
    assert "`egds snapshot --new-model --model 'model with spaces'`" in message
    run_advice(root, message)
    assert latest(root).model == "model with spaces"
    assert Repository.open(root).config.model == "model with spaces"


def test_a_failed_config_write_after_a_model_change_is_a_warning_with_the_command_that_fixes_it(filled_repo, monkeypatch):
    root = filled_repo.root
    new_dimension(filled_repo)

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Repository, "update_config", read_only)
    result = egds(root, "snapshot", "--new-model", "--model", "m2")
    assert "Recorded v2" in result.stdout
    assert "could not make it the default" in result.stderr and "`egds config model m2`" in result.stderr
    monkeypatch.undo()
    run_advice(root, result.stderr)
    assert Repository.open(root).config.model == "m2"


# ---- egds config -------------------------------------------------------------------------------------------


def test_config_lists_shows_and_sets_settings_in_text_and_json(filled_repo):
    root = filled_repo.root
    assert egds(root, "config").stdout.splitlines() == [
        "cache = cache/rag", "model = test-model", "partitioning = month", "format = 1"
    ]
    assert json.loads(egds(root, "config", "--json").stdout) == {
        "cache": "cache/rag", "model": "test-model", "partitioning": "month", "format": 1
    }
    assert egds(root, "config", "model").stdout == "test-model\n"
    assert json.loads(egds(root, "config", "model", "--json").stdout) == {"key": "model", "value": "test-model", "previous": None}
    changed = json.loads(egds(root, "config", "model", "m-2", "--json").stdout)
    assert changed == {"key": "model", "value": "m-2", "previous": "test-model"}
    on_disk = json.loads((root / ".egds" / "config.json").read_text())
    assert on_disk == {"format": 1, "cache": "cache/rag", "partitioning": "month", "model": "m-2"}
    assert not [p for p in (root / ".egds").iterdir() if p.name.endswith(".tmp")]


def test_config_cache_takes_a_path_relative_to_the_directory_egds_runs_in(filled_repo, tmp_path):
    root = filled_repo.root
    egds(root, "config", "cache", "data/rag")  # relative to -C ROOT
    assert Repository.open(root).config.cache == "data/rag"
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    egds(root, "config", "cache", str(outside))
    assert Repository.open(root).config.cache == str(outside.resolve())


def test_a_missing_cache_suggests_a_command_that_points_egds_at_the_right_one(filled_repo):
    root = filled_repo.root
    (root / "cache" / "rag").rename(root / "cache" / "moved")
    message = error(root, "snapshot", code=1)
    assert "`egds config cache PATH`" in message and "--cache" not in message
    run_advice(root, message, PATH="cache/moved")
    assert not Repository.open(root).snapshot("found it").created  # the same content as v1
    assert Repository.open(root).status().clean


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("partitioning", "year"), "partitioning is fixed at init"),
        (("format", "2"), "format is the repository's format version"),
        (("colour", "blue"), "unknown setting 'colour'; the settings are cache, model, partitioning, format"),
        (("model", "  "), "model must not be empty"),
        (("model", "a\nb"), "must not contain control characters"),
    ],
)
def test_config_refuses_what_cannot_be_set_with_one_line_and_changes_nothing(filled_repo, args, expected):
    before = repo_tree(filled_repo.root)
    assert expected in error(filled_repo.root, "config", *args, code=2)
    assert repo_tree(filled_repo.root) == before


def test_the_mcp_tools_read_and_change_the_settings(filled_repo):
    from egregora_ds.mcp_server import TOOLS, ConfigArgs, ConfigSetArgs, _Call

    call = _Call(filled_repo.root)
    assert TOOLS["config"].run(call, ConfigArgs()) == filled_repo.config_items()
    assert TOOLS["config"].run(call, ConfigArgs(key="model")) == {"model": "test-model"}
    changed = TOOLS["config_set"].run(call, ConfigSetArgs(key="cache", value="elsewhere"))
    assert (changed.value, changed.previous) == ("elsewhere", "cache/rag")
    assert Repository.open(filled_repo.root).cache_path == (filled_repo.root / "elsewhere").resolve()
