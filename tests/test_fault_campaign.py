"""Kill -9 at random moments of every operation (tests/fault_campaign.py has the method).

CI runs `EGDS_FAULT_KILLS` (default 3) kills per operation; the long run (>= 30 per operation) is
documented in tests/README-fault-campaign.md. Each operation's scoreboard is printed; any trial whose
invariants broke, whose re-run failed or whose outcome differs from a clean run fails the test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fault_campaign import (
    Operation,
    Scoreboard,
    Trial,
    cache_files,
    cache_version,
    campaign,
    referenced_bytes_missing,
    directory_files,
    dump_scoreboards,
    remote_files,
    remote_ref_problems,
    repository_files,
    silent_revert,
    verify_problems,
)
from egregora_ds import Repository
from egregora_ds.card import CARD_KEY, LATEST_KEY
from egregora_ds.model import decode_manifest
from egregora_ds.sample import append_month, edit_chunk, write_sample_cache
from egregora_ds.testing.ia_emulator import IAEmulator

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("EGDS_FAULT_KILLS", "3"))
SEED = int(os.environ.get("EGDS_FAULT_SEED", "20261205"))
ROWS, DIM, MONTHS = 20_000, 96, 12
CACHE = "cache/rag"
BOARDS: list[Scoreboard] = []


@dataclass
class Templates:
    """Starting states, built once: repositories at v1 and v2, reference caches, remotes' files."""

    root: Path
    repo_v1: Path  # a repository at v1 whose cache holds v1
    repo_v2: Path  # the same repository after v2 (an edited chunk and a new month)
    repo_gc: Path  # repo_v2 plus garbage: an unreachable v3 and a temp file
    cache_v1: Path  # the pipeline's own files of v1 and v2
    cache_v2: Path
    co_v1: Path  # v1 and v2 as egds checks them out (a checkout writes its own bytes)
    co_v2: Path
    remote_v1: dict[str, bytes]  # what a directory remote holds after pushing v1
    remote_v2: Path  # a directory remote after pushing v2
    clone_v1: Path  # a clone of remote_v1 (origin to be re-pointed), at v1
    env: dict[str, str]
    emu: IAEmulator


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Templates]:
    root = tmp_path_factory.mktemp("campaign")
    with IAEmulator() as emu:
        env = {**os.environ, "EGDS_IA_ENDPOINT": emu.endpoint, "IA_ACCESS_KEY_ID": "test-access",
               "IA_SECRET_ACCESS_KEY": "test-secret", "EGDS_RETRY_BACKOFF": "0.01"}
        saved = {k: os.environ.get(k) for k in env if os.environ.get(k) != env[k]}
        os.environ.update({k: env[k] for k in saved})
        try:
            yield _build(root, env, emu)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    dump_scoreboards(BOARDS, os.environ.get("EGDS_FAULT_REPORT"))


def _build(root: Path, env: dict[str, str], emu: IAEmulator) -> Templates:
    work = root / "work"
    repo = Repository.init(work, cache=CACHE, model="campaign-model")
    write_sample_cache(repo.cache_path, ROWS, dim=DIM, months=MONTHS)
    repo.snapshot("v1")
    shutil.copytree(work, root / "repo_v1")
    shutil.copytree(repo.cache_path, root / "cache_v1")
    repo.remote_add("bk", str(root / "remote_v1"))
    repo.push("bk")
    remote_v1 = directory_files(root / "remote_v1")
    assert Repository.clone(str(root / "remote_v1"), root / "clone_v1").version == 1
    edit_chunk(repo.cache_path, chunk_id=5, text="an edited chunk")
    append_month(repo.cache_path, 500)
    repo.snapshot("v2")
    shutil.copytree(repo.cache_path, root / "cache_v2")
    repo.remote_remove("bk")
    repo.remote_add("bk", str(root / "remote_v2"))
    repo.push("bk")
    repo.remote_remove("bk")
    repo.checkout("v1", cache=root / "co_v1")
    repo.checkout("v2", cache=root / "co_v2")
    shutil.copytree(work, root / "repo_v2")
    # Garbage for gc: a v3 that main no longer reaches, and a temp file left by a killed command.
    append_month(repo.cache_path, 300)
    repo.snapshot("v3, to be dropped")
    repo.store.write_ref("main", Repository.open(root / "repo_v2").head())  # type: ignore[arg-type]
    (repo.store.tmp_dir / "left-by-a-kill.parquet").write_bytes(b"x" * 1000)
    shutil.copytree(repo.cache_path, root / "cache_v3")
    shutil.copytree(root / "cache_v2", repo.cache_path, dirs_exist_ok=True)
    shutil.copytree(work, root / "repo_gc")
    return Templates(root, root / "repo_v1", root / "repo_v2", root / "repo_gc", root / "cache_v1",
                     root / "cache_v2", root / "co_v1", root / "co_v2", remote_v1, root / "remote_v2",
                     root / "clone_v1", env, emu)


def _copy_repo(source: Path, target: Path) -> None:
    shutil.copytree(source, target, symlinks=True)


def _write_files(files: dict[str, bytes], target: Path) -> None:
    for key, data in files.items():
        path = target.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _manifest_without_time(root: Path) -> dict[str, bytes]:
    repo = Repository.open(root)
    head = repo.head()
    if head is None:
        return {"main": b"none"}
    text = repo.store.read_manifest_bytes(head)
    m = decode_manifest(text, "main")
    return {"main manifest": repr((m.version, m.parent, m.message, m.model, m.dim, m.dtype, m.rows, m.partitions,
                                   m.row_order, m.extras, m.index)).encode()}


def _objects(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in repository_files(root).items() if k.startswith("objects/")}


def _ia_files(emu: IAEmulator, identifier: str) -> dict[str, bytes]:
    return {k: v for k, v in emu.files(identifier).items() if k.startswith("egds/") or k in (CARD_KEY, LATEST_KEY)}


def operations(t: Templates) -> dict[str, Operation]:

    def cache_is_a_version(path: Path, allowed: dict[str, Path | None]) -> list[str]:
        if not path.exists():
            return []
        version = cache_version(path, allowed)
        return [] if version is not None else [f"the cache at {path} is neither {' nor '.join(allowed)}"]

    def repo_checks(root: Path, cache_versions: dict[str, Path | None] | None = None, revert_check: bool = False) -> list[str]:
        problems = verify_problems(root)
        if cache_versions is not None:
            problems += cache_is_a_version(root / CACHE, cache_versions)
        if revert_check and not problems:
            found = silent_revert(root)
            problems += [found] if found else []
        return problems

    # -- snapshot: v1 repository, cache edited to v2's content --------------------------------------------
    def snapshot_prepare(trial: Trial) -> None:
        _copy_repo(t.repo_v1, trial.root)
        shutil.copytree(t.cache_v2, trial.root / CACHE, dirs_exist_ok=True)

    snapshot = Operation(
        "snapshot",
        prepare=snapshot_prepare,
        argv=lambda trial: ["-C", str(trial.root), "snapshot", "-m", "v2"],
        outcome=lambda trial: {**_objects(trial.root), **_manifest_without_time(trial.root), **cache_files(trial.root / CACHE)},
        invariants=lambda trial: repo_checks(trial.root, {"v2": t.cache_v2}),
        lost_bytes=lambda trial: referenced_bytes_missing(trial.root),
    )

    # -- checkout v1 over the v2 cache ------------------------------------------------------------------------
    checkout = Operation(
        "checkout",
        prepare=lambda trial: _copy_repo(t.repo_v2, trial.root),
        argv=lambda trial: ["-C", str(trial.root), "checkout", "v1"],
        outcome=lambda trial: {**repository_files(trial.root), **cache_files(trial.root / CACHE)},
        invariants=lambda trial: repo_checks(trial.root, {"v1": t.co_v1, "v2": t.cache_v2}, revert_check=True),
        lost_bytes=lambda trial: referenced_bytes_missing(trial.root),
    )

    # -- push v2 to a directory remote that holds v1 ------------------------------------------------------
    def push_dir_prepare(trial: Trial) -> None:
        _copy_repo(t.repo_v2, trial.root / "repo")
        _write_files(t.remote_v1, trial.root / "remote")
        Repository.open(trial.root / "repo").remote_add("bk", str(trial.root / "remote"))

    push_dir = Operation(
        "push-dir",
        prepare=push_dir_prepare,
        argv=lambda trial: ["-C", str(trial.root / "repo"), "push", "bk"],
        outcome=lambda trial: remote_files(trial.root / "remote"),
        invariants=lambda trial: verify_problems(trial.root / "repo")
        + remote_ref_problems(directory_files(trial.root / "remote"), "the directory remote"),
    )

    # -- push v2 to an archive.org item that holds v1 ---------------------------------------------------
    def push_ia_prepare(trial: Trial) -> None:
        trial.identifier = f"egds-campaign-{uuid.uuid4().hex[:12]}"
        _copy_repo(t.repo_v2, trial.root / "repo")
        for key, data in t.remote_v1.items():
            t.emu.put_file(trial.identifier, key, data)
        Repository.open(trial.root / "repo").remote_add("ia", f"ia:{trial.identifier}")

    push_ia = Operation(
        "push-ia",
        prepare=push_ia_prepare,
        argv=lambda trial: ["-C", str(trial.root / "repo"), "push", "ia"],
        outcome=lambda trial: _ia_files(t.emu, trial.identifier),
        invariants=lambda trial: verify_problems(trial.root / "repo")
        + remote_ref_problems(_ia_files(t.emu, trial.identifier), "the archive.org item"),
    )

    # -- clone the v2 directory remote ----------------------------------------------------------------------
    def clone_outcome(trial: Trial) -> dict[str, bytes]:
        return {**repository_files(trial.root / "copy"), **cache_files(trial.root / "copy" / CACHE)}

    def clone_invariants(trial: Trial) -> list[str]:
        copy = trial.root / "copy"
        if not (copy / ".egds" / "config.json").is_file() or (copy / ".egds" / "clone-in-progress").is_file():
            return []  # killed before the clone was complete: every command says to re-run it (checked by the re-run)
        return repo_checks(copy, {"no cache yet": None, "v2": t.co_v2})

    clone_dir = Operation(
        "clone-dir",
        prepare=lambda trial: trial.root.mkdir(parents=True),
        argv=lambda trial: ["-C", str(trial.root), "clone", str(t.remote_v2), "copy"],
        outcome=clone_outcome,
        invariants=clone_invariants,
    )

    # -- clone an archive.org item holding v2 (one read-only item for every trial) ---------------------
    clone_item = "egds-campaign-clone-source"
    for key, data in directory_files(t.remote_v2).items():
        t.emu.put_file(clone_item, key, data)
    clone_ia = Operation(
        "clone-ia",
        prepare=lambda trial: trial.root.mkdir(parents=True),
        argv=lambda trial: ["-C", str(trial.root), "clone", f"ia:{clone_item}", "copy"],
        outcome=clone_outcome,
        invariants=clone_invariants,
    )

    # -- pull v2 into a clone at v1 ---------------------------------------------------------------------
    def pull_prepare(trial: Trial) -> None:
        _copy_repo(t.clone_v1, trial.root / "copy")
        shutil.copytree(t.remote_v2, trial.root / "remote")
        repo = Repository.open(trial.root / "copy")
        remotes = repo.remotes.load()
        remotes["origin"] = type(remotes["origin"])(url=str(trial.root / "remote"))
        repo.remotes.save(remotes)

    pull = Operation(
        "pull",
        prepare=pull_prepare,
        argv=lambda trial: ["-C", str(trial.root / "copy"), "pull"],
        outcome=lambda trial: {k: v for k, v in clone_outcome(trial).items() if k != "remotes.json"},
        invariants=lambda trial: repo_checks(trial.root / "copy", {"v1": t.co_v1, "v2": t.co_v2}, revert_check=True),
        lost_bytes=lambda trial: referenced_bytes_missing(trial.root / "copy"),
    )

    # -- gc of an unreachable version -------------------------------------------------------------------
    gc = Operation(
        "gc",
        prepare=lambda trial: _copy_repo(t.repo_gc, trial.root),
        argv=lambda trial: ["-C", str(trial.root), "gc"],
        outcome=lambda trial: repository_files(trial.root),
        invariants=lambda trial: verify_problems(trial.root),
        lost_bytes=lambda trial: referenced_bytes_missing(trial.root),
    )
    return {op.name: op for op in (snapshot, checkout, push_dir, push_ia, clone_dir, clone_ia, pull, gc)}


OPERATIONS = ["snapshot", "checkout", "push-dir", "push-ia", "clone-dir", "clone-ia", "pull", "gc"]


@pytest.mark.parametrize("name", OPERATIONS)
def test_killing_an_operation_at_random_moments_loses_nothing_and_a_rerun_completes_it(
    templates: Templates, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    operation = operations(templates)[name]
    board = campaign(operation, tmp_path, templates.env, KILLS, SEED + OPERATIONS.index(name), lambda p: Trial(p))
    BOARDS.append(board)
    with capsys.disabled():
        print(f"\n[fault campaign] {board.line()}")
    assert board.faults == KILLS
    assert not board.failures, "\n".join(board.failures[:10])
    assert board.survived == KILLS and board.bytes_lost == 0 and board.refs_to_missing_data == 0


def test_the_campaign_covers_every_operation(templates: Templates) -> None:
    assert sorted(operations(templates)) == sorted(OPERATIONS)
