"""A repository written by format 1 is checked in (tests/fixtures/repo-format1): every later egds
must still read it, verify it and rebuild its caches exactly, and must derive the same content
hashes from the same caches (the content-hash algorithm is part of the format)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import load_cache
from egregora_ds import Repository

FIXTURE = Path(__file__).parent / "fixtures" / "repo-format1"


@pytest.fixture
def fixture_repo(tmp_path: Path) -> Repository:
    shutil.copytree(FIXTURE, tmp_path / "repo")
    return Repository.open(tmp_path / "repo")


def assert_same_cache(actual: Path, expected: Path) -> None:
    got, want = load_cache(actual), load_cache(expected)
    assert got[0]["embeddings"].dtype == want[0]["embeddings"].dtype
    assert np.array_equal(got[0]["embeddings"].view(np.uint8), want[0]["embeddings"].view(np.uint8))
    assert got[1] == want[1]
    assert got[2] == want[2]


def test_the_format1_fixture_still_verifies_deeply(fixture_repo: Repository) -> None:
    report = fixture_repo.verify(deep=True)
    assert report.ok, report.problems
    assert [e.version for e in fixture_repo.log()] == [2, 1]
    assert fixture_repo.log()[1].tags == ["release"]


@pytest.mark.parametrize(("rev", "expected"), [("v1", "expected-v1"), ("release", "expected-v1"), ("latest", "expected-v2")])
def test_every_version_of_the_format1_fixture_checks_out_exactly(fixture_repo: Repository, tmp_path: Path, rev: str, expected: str) -> None:
    fixture_repo.checkout(rev, cache=tmp_path / "out")
    assert_same_cache(tmp_path / "out", FIXTURE / expected)


def test_snapshotting_the_fixture_caches_again_reproduces_their_content_hashes(tmp_path: Path, fixture_repo: Repository) -> None:
    fresh = Repository.init(tmp_path / "fresh", cache=str(tmp_path / "cache"), model="fixture-model")
    for version, expected in ((1, "expected-v1"), (2, "expected-v2")):
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        shutil.copytree(FIXTURE / expected, tmp_path / "cache")
        fresh.snapshot(f"again {version}")
        _, original = fixture_repo.resolve(f"v{version}")
        _, again = fresh.resolve(f"v{version}")
        assert [(p.key, p.content_hash, p.rows) for p in again.partitions] == [
            (p.key, p.content_hash, p.rows) for p in original.partitions
        ]
        assert (again.extras, again.index, again.row_order) == (original.extras, original.index, original.row_order)
