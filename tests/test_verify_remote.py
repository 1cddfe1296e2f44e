"""`egds verify --remote NAME [--deep]`: what a remote serves, checked from its ref down to every
object its versions name, with every problem reported at once (missing, damaged, wrong size or md5,
unlisted, unconfirmed) and nothing written anywhere. Also the local `verify` notes this branch adds
(objects no ref reaches, an interrupted pull)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import RemoteBackend, make_backend, make_chunks, make_embeddings, repo_tree, write_cache
from egregora_ds import Repository
from egregora_ds.card import REF_KEY, manifest_key, object_key
from egregora_ds.cli import app
from egregora_ds.errors import UsageError
from egregora_ds.ids import JSON, PARQUET, short
from egregora_ds.push import ListingPending
from egregora_ds.transfer import manifest_object_keys

ROWS, DIM = 48, 8


def publish(repo: Repository, backend: RemoteBackend) -> tuple[str, str]:
    """v1 and v2 recorded in `repo` and pushed to `backend` as `origin`; (v1, v2)."""
    chunks, vectors = make_chunks(ROWS, months=4), make_embeddings(ROWS, dim=DIM)
    write_cache(repo.cache_path, chunks, vectors, index={"n": 4})
    v1 = repo.snapshot("v1").id
    chunks[30]["text"] = "edited in v2"
    write_cache(repo.cache_path, chunks, vectors, index={"n": 4}, metadata_extra={"source": "v2"})
    v2 = repo.snapshot("v2").id
    repo.remote_add("origin", backend.url)
    repo.push("origin")
    backend.settle()
    return v1, v2


@pytest.fixture
def directory(repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Repository, RemoteBackend, str, str]:
    backend = make_backend("directory", tmp_path, monkeypatch)
    return (repo, backend, *publish(repo, backend))


@pytest.fixture
def archive(ia_env: Any, repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Repository, RemoteBackend, str, str]:
    backend = make_backend("ia", tmp_path, monkeypatch, ia_env)
    return (repo, backend, *publish(repo, backend))


def partition_object(repo: Repository, rev: str, index: int) -> tuple[str, str]:
    entry = repo.show(rev)[1].partitions[index]
    return object_key(entry.object, PARQUET), f"object {short(entry.object)}.parquet (partition {entry.key} of version"


def with_(problems: list[str], *needles: str) -> list[str]:
    return [p for p in problems if all(n in p for n in needles)]


# ---- a good remote ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "ia", "memory"])
def test_verify_remote_passes_on_a_remote_push_just_wrote_and_counts_what_it_checked(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, request: pytest.FixtureRequest
) -> None:
    emu = request.getfixturevalue("ia_env") if kind == "ia" else None
    backend = make_backend(kind, tmp_path, monkeypatch, emu)
    _, v2 = publish(repo, backend)
    before, stored = repo_tree(repo.root), backend.stored()
    for deep in (False, True):
        report = repo.verify(remote="origin", deep=deep)
        assert report.ok, report.problems
        assert (report.remote, report.url, report.version) == ("origin", backend.url, 2)
        assert report.manifests == 2
        assert report.objects == len({key for _, m in repo.history() for key in manifest_object_keys(m)})
    assert repo_tree(repo.root) == before and backend.stored() == stored, "verify --remote writes nothing"


# ---- a damaged directory remote --------------------------------------------------------------------


def test_verify_remote_reports_every_damaged_or_missing_object_at_once(directory: Any) -> None:
    repo, backend, _, _ = directory
    missing, missing_what = partition_object(repo, "v2", 0)
    truncated, truncated_what = partition_object(repo, "v2", 1)
    flipped, flipped_what = partition_object(repo, "v2", 2)
    backend.delete_raw(missing)
    backend.put_raw(truncated, backend.stored()[truncated][:-10])
    data = bytearray(backend.stored()[flipped])
    data[len(data) // 2] ^= 0xFF
    backend.put_raw(flipped, bytes(data))
    report = repo.verify(remote="origin")
    assert not report.ok
    assert len(with_(report.problems, missing_what, "is missing")) == 1, report.problems
    assert len(with_(report.problems, truncated_what, "listed as", "should be")) == 1, report.problems
    assert with_(report.problems, flipped_what) == [], "same size, no md5 in a directory listing: only --deep sees it"
    deep = repo.verify(remote="origin", deep=True)
    assert len(with_(deep.problems, flipped_what, "damaged")) == 1, deep.problems
    assert len(with_(deep.problems, missing_what, "is missing")) == 1
    for problem in deep.problems:
        assert "\n" not in problem and backend.url in problem and ("re-push" in problem or "run" in problem), problem


def test_verify_remote_reports_a_missing_manifest_and_the_version_below_which_it_stops(directory: Any) -> None:
    repo, backend, v1, _ = directory
    backend.delete_raw(manifest_key(v1))
    report = repo.verify(remote="origin")
    assert with_(report.problems, "lacks manifest", short(v1), "below version 2"), report.problems
    assert report.manifests == 1


def test_verify_remote_reports_a_remote_without_a_ref_and_how_to_publish_to_it(directory: Any) -> None:
    repo, backend, _, _ = directory
    backend.delete_raw(REF_KEY)
    report = repo.verify(remote="origin")
    assert not report.ok and with_(report.problems, REF_KEY, "`egds push origin`")


def test_verify_remote_notes_files_no_version_names_without_failing(directory: Any) -> None:
    repo, backend, _, _ = directory
    backend.put_raw(object_key("ab" * 32, PARQUET), b"left by an interrupted push")
    report = repo.verify(remote="origin")
    assert report.ok, report.problems
    assert any("named by no version" in note and "harmless" in note for note in report.notes), report.notes



@pytest.mark.parametrize("kind", ["directory", "memory"])
def test_verify_remote_of_a_remote_push_just_wrote_notes_nothing_about_egds_own_files(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # egds/card.json (every push) and egds/lock (directory remotes) are egds's own (SPEC.md §14.1),
    # not files "left by an interrupted or a competing push".
    publish(repo, make_backend(kind, tmp_path, monkeypatch))
    report = repo.verify(remote="origin")
    assert report.ok and report.notes == [], report.notes

def test_verify_remote_of_an_unknown_remote_names_the_known_ones(directory: Any) -> None:
    repo, _, _, _ = directory
    with pytest.raises(UsageError, match="no remote named 'nope'"):
        repo.verify(remote="nope")


def test_the_cli_prints_each_problem_and_exits_1_and_json_carries_the_remote(directory: Any) -> None:
    repo, backend, _, _ = directory
    missing, what = partition_object(repo, "v2", 0)
    backend.delete_raw(missing)
    result = CliRunner().invoke(app, ["-C", str(repo.root), "verify", "--remote", "origin"])
    assert result.exit_code == 1, result.output
    assert what in result.stderr and "problem:" in result.stderr
    assert f"on origin ({backend.url})" in result.stdout
    as_json = CliRunner().invoke(app, ["-C", str(repo.root), "verify", "--remote", "origin", "--json"])
    document = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and document["remote"] == "origin" and document["ok"] is False
    assert any(what in p for p in document["problems"])
    good = CliRunner().invoke(app, ["-C", str(repo.root), "verify"])
    assert good.exit_code == 0, "the local repository is fine: only the remote is damaged"


# ---- the archive.org emulator ---------------------------------------------------------------------


def test_verify_remote_reports_an_object_whose_ingest_was_lost_on_archive_org(archive: Any) -> None:
    repo, backend, _, _ = archive
    lost, what = partition_object(repo, "v2", 1)
    backend.delete_raw(lost)  # archive.org accepted the upload, then its ingest task failed
    report = repo.verify(remote="origin")
    assert with_(report.problems, what, "is missing"), report.problems
    assert len(report.problems) == 1


def test_verify_remote_calls_an_upload_archive_org_serves_but_does_not_list_yet_unlisted(
    archive: Any, tmp_path: Path
) -> None:
    repo, backend, _, _ = archive
    backend.emu.metadata_lag = 3600
    chunks, vectors = make_chunks(ROWS, months=4), make_embeddings(ROWS, dim=DIM)
    chunks[2]["text"] = "v3"
    write_cache(repo.cache_path, chunks, vectors, index={"n": 4}, metadata_extra={"source": "v2"})
    repo.snapshot("v3")
    with pytest.raises(ListingPending):  # egds itself never moves a ref before the listing shows its data
        repo.push("origin", wait=0)
    # ... but a remote can still get there (a push by another tool, an older egds): the ref names v3
    # while archive.org serves its files without listing them yet.
    backend.emu.put_file(backend.identifier, REF_KEY, f"{repo.head()}\n".encode())
    report = repo.verify(remote="origin")
    unlisted = with_(report.problems, "unlisted", "verify --remote origin` again later")
    assert unlisted and len(unlisted) == len(report.problems), report.problems
    backend.settle()
    assert repo.verify(remote="origin").ok


def test_verify_remote_compares_archive_org_md5_with_the_local_copy_and_deep_rehashes(archive: Any) -> None:
    repo, backend, _, _ = archive
    key, what = partition_object(repo, "v2", 0)
    data = bytearray(backend.stored()[key])
    data[-20] ^= 0x01
    backend.emu.put_file(backend.identifier, key, bytes(data))  # same size; the listing's md5 is of the new bytes
    report = repo.verify(remote="origin")
    assert with_(report.problems, what, "md5"), report.problems
    deep = repo.verify(remote="origin", deep=True)
    assert with_(deep.problems, what, "damaged"), deep.problems


def test_deep_verify_remote_catches_bit_rot_the_listing_cannot_see(archive: Any) -> None:
    repo, backend, _, _ = archive
    chunks, vectors = make_chunks(ROWS, months=4), make_embeddings(ROWS, dim=DIM)
    chunks[1]["text"] = "v3, uploaded onto a disk that flips a bit at rest"
    write_cache(repo.cache_path, chunks, vectors, index={"n": 4}, metadata_extra={"source": "v2"})
    repo.snapshot("v3")
    key, what = partition_object(repo, "v3", 0)
    backend.emu.inject("corrupt", match=lambda method, host, path: method == "PUT" and path.endswith(key))
    repo.push("origin")
    backend.settle()
    assert repo.verify(remote="origin").ok, "size and md5 are those of what was received"
    deep = repo.verify(remote="origin", deep=True)
    assert with_(deep.problems, what, "damaged"), deep.problems


# ---- MCP ------------------------------------------------------------------------------------------


def test_the_mcp_verify_tool_takes_a_remote(directory: Any) -> None:
    from egregora_ds.mcp_server import TOOLS, VerifyArgs, _Call

    repo, backend, _, _ = directory
    assert "remote" in TOOLS["verify"].listing().input_schema["properties"]
    missing, what = partition_object(repo, "v2", 0)
    backend.delete_raw(missing)
    report = TOOLS["verify"].run(_Call(repo.root), VerifyArgs(remote="origin"))
    assert not report.ok and with_(report.problems, what)
    assert TOOLS["verify"].run(_Call(repo.root), VerifyArgs()).ok


# ---- local verify notes ---------------------------------------------------------------------------


def test_verify_notes_objects_no_ref_reaches_and_gc_removes_them(filled_repo: Repository) -> None:
    orphan = filled_repo.store.put_object_bytes(b'{"left": "by an interrupted snapshot"}', JSON)
    report = filled_repo.verify()
    assert report.ok
    notes = [n for n in report.notes if "not reachable from any ref" in n]
    assert len(notes) == 1 and short(orphan) in notes[0] and "`egds gc` removes them" in notes[0], report.notes
    assert f"{orphan}.json" in filled_repo.gc().objects
    assert filled_repo.verify().notes == []
