"""A cache that holds, or was checked out as, another version than the latest is never recorded silently
(issue 9 item 3): `status` says which version it holds, `snapshot` refuses what would undo later versions
unless asked with `--revert`, and refuses a cache ahead of `main` (a pull that stopped after its checkout).
Also: the stamp written after the ref moved is best-effort (issue 10 item 13)."""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import make_chunks, make_embeddings, repo_tree, write_cache
from egregora_ds import Repository
from egregora_ds.cli import app
from egregora_ds.errors import CacheAhead, WouldRevert

INDEX = {"newsletters": 6}


def egds(root: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def edit(repo: Repository, chunk_id: int, text: str) -> None:
    """The pipeline rewrites the cache with one chunk's text changed (from what the cache holds now)."""
    metadata = json.loads((repo.cache_path / "metadata.json").read_text(encoding="utf-8"))
    chunks = metadata["chunks"]
    next(c for c in chunks if c["chunk_id"] == chunk_id)["text"] = text
    with open(repo.cache_path / "embeddings.pkl", "rb") as f:
        embeddings = pickle.load(f)["embeddings"]
    write_cache(repo.cache_path, chunks, embeddings, index=INDEX)


@pytest.fixture
def three_versions(repo: Repository) -> Repository:
    """v1: 60 chunks over 2024-01..06; v2 edits chunk 3 (2024-01); v3 edits chunk 33 (2024-04). Cache = v3."""
    write_cache(repo.cache_path, make_chunks(60), make_embeddings(60), index=INDEX)
    repo.snapshot("v1")
    edit(repo, 3, "edited in v2")
    repo.snapshot("v2")
    edit(repo, 33, "edited in v3")
    repo.snapshot("v3")
    return repo


# ---- an older version, unchanged ---------------------------------------------------------------------


def test_a_snapshot_of_an_older_version_checked_out_into_the_cache_is_refused_and_writes_nothing(three_versions):
    repo = three_versions
    repo.checkout("v1")
    before = repo_tree(repo.root)
    with pytest.raises(WouldRevert) as refused:
        repo.snapshot("nightly cron")
    message = str(refused.value)
    assert "holds v1" in message and "not the latest v3" in message and "v2..v3" in message
    assert "`egds checkout latest`" in message and "`egds snapshot --revert`" in message
    assert "2024-01" in message and "2024-04" in message
    assert repo_tree(repo.root) == before
    assert [e.version for e in repo.log()] == [3, 2, 1]


def test_status_says_the_cache_holds_an_older_version_and_what_a_snapshot_would_undo(three_versions):
    repo = three_versions
    repo.checkout("v1")
    status = repo.status()
    assert not status.clean and status.version == 3
    assert (status.holds, status.holds_id, status.relation) == (1, repo.resolve("v1")[0], "older")
    assert status.based_on is None
    assert status.would_undo == ["2024-01", "2024-04"]
    assert status.snapshot_refusal is not None and "`egds checkout latest`" in status.snapshot_refusal

    text = egds(repo.root, "status").stdout
    assert "holds v1" in text and "an older version than the latest v3" in text
    assert "A snapshot would be refused" in text and "Run `egds snapshot` to record" not in text
    as_json = json.loads(egds(repo.root, "status", "--json").stdout)
    assert as_json["holds"] == 1 and as_json["relation"] == "older" and as_json["would_undo"] == ["2024-01", "2024-04"]


def test_the_older_version_is_recognised_by_its_content_when_the_stamp_is_gone(three_versions):
    repo = three_versions
    repo.checkout("v2")
    (repo.store.root / "state.json").unlink()
    assert repo.status().holds == 2 and repo.status().relation == "older"
    with pytest.raises(WouldRevert, match="holds v2"):
        repo.snapshot("cron")


def test_following_the_advice_checkout_latest_returns_to_the_latest_version(three_versions):
    repo = three_versions
    repo.checkout("v1")
    egds(repo.root, "checkout", "latest")  # as the message says: no --force needed
    assert repo.status().clean and repo.status().holds == 3 and repo.status().relation == "latest"
    assert not repo.snapshot("cron").created


def test_revert_records_the_older_content_as_the_new_latest(three_versions):
    repo = three_versions
    repo.checkout("v1")
    result = egds(repo.root, "snapshot", "--revert", "-m", "back to v1", "--json")
    recorded = json.loads(result.stdout)
    assert recorded["created"] and recorded["version"] == 4
    _, v1 = repo.show("v1")
    _, v4 = repo.show("v4")
    assert v4.partitions == v1.partitions and v4.parent == repo.resolve("v3")[0]
    assert repo.status().clean


def test_checkout_of_an_older_version_into_the_cache_says_how_to_return(three_versions):
    out = egds(three_versions.root, "checkout", "v1").stdout
    assert "not the latest version: `egds checkout latest` returns to it" in out and "--revert" in out
    elsewhere = egds(three_versions.root, "checkout", "v1", "--cache", "copy").stdout
    assert "not the latest" not in elsewhere  # another directory is not the working cache


# ---- edits on top of an older version -------------------------------------------------------------------


def test_edits_on_top_of_an_older_version_are_refused_even_where_they_touch_the_changed_partitions(three_versions):
    # v2 changed January, v3 April. Edit January's chunk 3 again and April's chunk 33 again: both partitions
    # differ from v1 and from v3, yet v3's changes to other chunks of those months could be lost, so refuse.
    repo = three_versions
    repo.checkout("v1")
    edit(repo, 3, "third text")
    edit(repo, 33, "another text")
    status = repo.status()
    assert status.based_on == 1 and status.holds is None and status.relation == "older"
    with pytest.raises(WouldRevert) as refused:
        repo.snapshot("edits on v1")
    message = str(refused.value)
    assert "was checked out as v1" in message and "changed since" in message
    assert "`egds snapshot --revert`" in message and "`egds checkout latest --force`" in message
    assert repo.snapshot("on purpose", revert=True).version == 4


def test_edits_on_top_of_an_older_version_name_the_partitions_that_still_hold_its_content(three_versions):
    repo = three_versions
    repo.checkout("v1")
    edit(repo, 50, "an edit in June")  # January and April still hold v1's content
    with pytest.raises(WouldRevert, match=r"still holds v1's content in 2024-01, 2024-04"):
        repo.snapshot("edit on v1")
    assert "2024-01" in egds(repo.root, "status").stdout


def test_edits_on_top_of_the_latest_version_are_recorded_as_usual(three_versions):
    repo = three_versions
    edit(repo, 50, "an edit in June")
    assert repo.status().based_on == 3 and repo.status().relation == "latest" and repo.status().snapshot_refusal is None
    assert repo.snapshot("june").version == 4


def test_the_pipeline_undoing_its_own_edit_is_not_a_revert(three_versions):
    # The stamp says the cache was written as the latest version; the pipeline then put chunk 33 back.
    repo = three_versions
    edit(repo, 33, make_chunks(60)[33]["text"])
    assert repo.status().snapshot_refusal is None
    assert repo.snapshot("undo the April edit").created


# ---- a newer version than main -----------------------------------------------------------------------------


def pull_that_stopped_after_its_checkout(tmp_path: Path) -> tuple[Repository, Repository]:
    """`other` pushed v2; `mine` fetched it and checked it out, but main still names v1."""
    origin = Repository.init(tmp_path / "origin", cache="cache/rag", model="m")
    write_cache(origin.cache_path, make_chunks(30), make_embeddings(30), index=INDEX)
    origin.snapshot("v1")
    remote = tmp_path / "remote"
    origin.remote_add("origin", str(remote))
    origin.push("origin")
    mine = Repository.clone(str(remote), tmp_path / "mine")
    edit(origin, 3, "edited upstream")
    origin.snapshot("v2")
    origin.push("origin")
    mine_repo = Repository.open(tmp_path / "mine")
    mine_repo.pull("origin")
    v1 = mine_repo.resolve("v1")[0]
    mine_repo.store.write_ref("main", v1)  # the moment between the checkout and the ref: main is behind
    return origin, mine_repo


def test_a_cache_newer_than_main_is_not_recorded_and_the_message_says_to_rerun_the_pull(tmp_path):
    _, mine = pull_that_stopped_after_its_checkout(tmp_path)
    status = mine.status()
    assert status.holds == 2 and status.relation == "newer"
    before = repo_tree(mine.root)
    with pytest.raises(CacheAhead) as refused:
        mine.snapshot("cron")
    assert "`egds pull origin`" in str(refused.value) and "holds v2" in str(refused.value)
    assert repo_tree(mine.root) == before
    with pytest.raises(CacheAhead):
        mine.snapshot("even with revert", revert=True)
    egds(mine.root, "pull", "origin")  # the advice, as written
    assert mine.head() == mine.resolve("v2")[0] and mine.status().clean


# ---- the stamp after the ref (issue 10 item 13) ---------------------------------------------------------


def test_a_failed_stamp_write_after_the_ref_moved_is_a_warning_not_an_error(three_versions, monkeypatch):
    repo = three_versions
    edit(repo, 50, "june")

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(repo.store.root / "state.json"))

    monkeypatch.setattr(Repository, "set_cache_stamp", full_disk)
    result = egds(repo.root, "snapshot", "-m", "june")
    assert "Recorded v4" in result.stdout
    assert "egds: warning: could not write the cache stamp" in result.stderr and "nothing is lost" in result.stderr
    assert "nothing is half-written" not in result.stderr
    monkeypatch.undo()
    assert repo.head() == repo.resolve("v4")[0]
    assert repo.status().clean  # the next status re-reads the cache and finds v4
    assert not repo.snapshot("again").created


def test_a_failed_stamp_write_is_reported_in_the_json_result(three_versions, monkeypatch):
    repo = three_versions
    edit(repo, 50, "june")
    def failing_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Repository, "set_cache_stamp", failing_disk)
    result = repo.snapshot("june")
    assert result.created and result.version == 4 and len(result.warnings) == 1


# ---- the same rule where the older version came from elsewhere -------------------------------------------


def test_a_clone_of_an_older_revision_is_not_recorded_as_the_latest(three_versions, tmp_path):
    three_versions.remote_add("origin", str(tmp_path / "remote"))
    three_versions.push("origin")
    clone = Repository.clone(str(tmp_path / "remote"), tmp_path / "old-copy", rev="v1")
    copy = Repository.open(clone.directory)
    assert copy.status().holds == 1 and copy.status().relation == "older"
    with pytest.raises(WouldRevert, match="holds v1"):
        copy.snapshot("cron in the copy")


def test_a_pull_that_moved_main_but_not_the_cache_is_not_recorded_as_a_revert(tmp_path):
    # The old pull order (main first, then the checkout) killed between the two: main is v2, the cache v1.
    origin, mine = pull_that_stopped_after_its_checkout(tmp_path)
    mine.store.write_ref("main", origin.head())
    mine.checkout("v1")  # the cache and its stamp as the pull found them
    with pytest.raises(WouldRevert) as refused:
        mine.snapshot("cron")
    egds(mine.root, "checkout", "latest")  # the advice: finish by checking out the latest
    assert "`egds checkout latest`" in str(refused.value) and mine.status().clean
