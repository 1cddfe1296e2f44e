"""`verify` finds every kind of damage (and all of it at once); `gc` deletes exactly what no ref
reaches plus the leftovers of interrupted commands, and nothing with --dry-run."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pyarrow as pa
import pytest

from conftest import dir_tree, flip_byte, load_cache, make_chunks, make_embeddings, repo_tree, write_cache
from egregora_ds import Repository
from egregora_ds.errors import CorruptObject, MissingObject
from egregora_ds.ids import JSON, PARQUET, short
from egregora_ds.model import Manifest, PartitionEntry, encode_manifest
from egregora_ds.parquet_io import read_partition, write_partition
from egregora_ds.table import content_hash


def entry(repo: Repository, key: str, rev: str = "latest") -> PartitionEntry:
    return next(p for p in repo.show(rev)[1].partitions if p.key == key)


def object_path(repo: Repository, key: str, rev: str = "latest") -> Path:
    return repo.store.object_path(entry(repo, key, rev).object, PARQUET)


def put_manifest(repo: Repository, manifest: Manifest, *, main: bool = True) -> str:
    manifest_id = repo.store.put_manifest(encode_manifest(manifest))
    if main:
        repo.store.write_ref("main", manifest_id)
    return manifest_id


def child_of(repo: Repository, parent_id: str, message: str, **changes) -> Manifest:
    parent = repo.manifest(parent_id)
    fields = {"version": parent.version + 1, "parent": parent_id, "message": message, **changes}
    return msgspec.structs.replace(parent, **fields)


def problems_with(report, *needles: str) -> list[str]:
    return [p for p in report.problems if all(n in p for n in needles)]


# ---- verify ---------------------------------------------------------------------------------------


def test_verify_passes_on_a_good_repository_with_several_versions_and_a_tag(filled_repo):
    write_cache(filled_repo.cache_path, make_chunks(70, months=7), make_embeddings(70), index={"newsletters": 7})
    filled_repo.snapshot("v2")
    filled_repo.tag("release", "v1")
    for deep in (False, True):
        report = filled_repo.verify(deep=deep)
        assert report.ok, report.problems
        assert report.problems == [] and report.notes == []
        assert report.manifests == 2
        assert report.objects == len({p.object for _, m in filled_repo.history() for p in m.partitions}) + 2  # + 2 index


def test_a_flipped_byte_in_an_object_is_reported_by_short_id_and_partition(filled_repo):
    bad = entry(filled_repo, "2024-03")
    flip_byte(filled_repo.store.object_path(bad.object, PARQUET))
    report = filled_repo.verify()
    assert not report.ok
    assert problems_with(report, short(bad.object), "corrupt")
    assert problems_with(report, short(bad.object), "2024-03"), report.problems
    assert not any("2024-01" in p or "2024-02" in p for p in report.problems)


def test_checkout_of_a_version_with_a_corrupt_object_raises_corrupt_object_and_writes_nothing(filled_repo, tmp_path):
    bad = entry(filled_repo, "2024-03")
    flip_byte(filled_repo.store.object_path(bad.object, PARQUET))
    other = tmp_path / "other"
    with pytest.raises(CorruptObject) as info:
        filled_repo.checkout("v1", other)
    assert short(bad.object) in str(info.value) and "2024-03" in str(info.value)
    assert not other.exists()
    # Over a cache with unsaved edits and --force: the object is read (and found corrupt) before
    # anything is written, so the edits survive.
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61), index={"edited": True})
    cache_before, repo_before = dir_tree(filled_repo.cache_path), repo_tree(filled_repo.root)
    with pytest.raises(CorruptObject, match=short(bad.object)):
        filled_repo.checkout("v1", force=True)
    assert dir_tree(filled_repo.cache_path) == cache_before
    assert repo_tree(filled_repo.root) == repo_before


def test_a_missing_object_is_reported_and_checkout_names_it(filled_repo, tmp_path):
    gone = entry(filled_repo, "2024-05")
    filled_repo.store.object_path(gone.object, PARQUET).unlink()
    report = filled_repo.verify()
    assert not report.ok
    assert problems_with(report, short(gone.object), "2024-05", "missing"), report.problems
    with pytest.raises(MissingObject, match=short(gone.object)):
        filled_repo.checkout("v1", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_a_missing_index_object_is_reported(filled_repo):
    index_id = filled_repo.show()[1].index
    filled_repo.store.object_path(index_id, JSON).unlink()
    report = filled_repo.verify()
    assert problems_with(report, short(index_id), "index.json", "missing"), report.problems


def test_a_manifest_whose_parent_is_missing_is_reported(filled_repo):
    orphan = child_of(filled_repo, filled_repo.head(), "orphan", parent="f" * 64)
    orphan_id = put_manifest(filled_repo, orphan)
    report = filled_repo.verify()
    assert not report.ok
    assert problems_with(report, short(orphan_id), "parent", "f" * 12, "missing"), report.problems


def test_a_manifest_whose_version_does_not_follow_its_parents_is_reported(filled_repo):
    skipped = child_of(filled_repo, filled_repo.head(), "skip", version=5)
    skipped_id = put_manifest(filled_repo, skipped)
    report = filled_repo.verify()
    assert problems_with(report, short(skipped_id), "version 5"), report.problems


def test_a_corrupt_manifest_and_a_damaged_ref_are_reported(filled_repo):
    head = filled_repo.head()
    flip_byte(filled_repo.store.manifest_path(head))
    (filled_repo.store.refs_dir / "tags" / "broken").write_text("not an id\n")
    report = filled_repo.verify()
    assert problems_with(report, "manifest", short(head), "corrupt"), report.problems
    assert problems_with(report, "refs/tags/broken"), report.problems


def test_verify_reports_every_problem_not_only_the_first(filled_repo):
    v1 = filled_repo.head()
    corrupt, missing = entry(filled_repo, "2024-01"), entry(filled_repo, "2024-02")
    flip_byte(filled_repo.store.object_path(corrupt.object, PARQUET))
    filled_repo.store.object_path(missing.object, PARQUET).unlink()
    filled_repo.store.object_path(filled_repo.show()[1].index, JSON).unlink()
    (filled_repo.store.refs_dir / "tags" / "broken").write_text("garbage")
    orphan_id = put_manifest(filled_repo, child_of(filled_repo, v1, "orphan", parent="e" * 64), main=False)
    filled_repo.store.write_ref("tags/orphan", orphan_id)
    report = filled_repo.verify()
    expected = [
        (short(corrupt.object), "2024-01", "corrupt"),
        (short(missing.object), "2024-02", "missing"),
        ("index.json", "missing"),
        ("refs/tags/broken",),
        (short(orphan_id), "e" * 12, "missing"),
    ]
    for needles in expected:
        assert problems_with(report, *needles), (needles, report.problems)
    assert len(report.problems) >= len(expected)


def test_verify_notes_unreachable_manifests_and_stray_files_without_failing(filled_repo):
    v1 = filled_repo.head()
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61), index={"newsletters": 6})
    v2 = filled_repo.snapshot("v2").id
    filled_repo.store.write_ref("main", v1)
    (filled_repo.store.objects_dir / "README").write_text("left by hand")
    report = filled_repo.verify()
    assert report.ok, report.problems
    assert any(short(v2) in n and "not reachable" in n for n in report.notes), report.notes
    assert any("README" in n for n in report.notes), report.notes


def _swap_in_other_content(repo: Repository, how: str) -> tuple[str, str]:
    """A child of v1 whose 2024-02 entry names a valid-hash object with *other* content, keeping
    2024-02's content hash and row count, so only decoding can tell. Returns (manifest id, object id)."""
    v1 = repo.head()
    right = entry(repo, "2024-02")
    if how == "another-partitions-object":
        # The object of 2024-01 (same row count), which v1 also references under its right key.
        wrong_object = entry(repo, "2024-01").object
    else:
        # A new Parquet file, stored under the hash of its own bytes: 2024-02 with one text edited.
        table = read_partition(repo.store.read_object(right.object, PARQUET), right, repo.manifest(v1))
        texts = table.column("text").to_pylist()
        texts[0] = texts[0] + " (edited)"
        table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
        temp = repo.store.temp_path(PARQUET)
        write_partition(table, temp, right.key, content_hash(table))
        wrong_object, _ = repo.store.commit_object_file(temp, PARQUET)
    size = repo.store.object_path(wrong_object, PARQUET).stat().st_size
    partitions = tuple(
        msgspec.structs.replace(p, object=wrong_object, bytes=size) if p.key == "2024-02" else p
        for p in repo.manifest(v1).partitions
    )
    # The deep check visits manifests in id order; make the bad one come after v1, so that an
    # object first seen under its right entry in v1 must still be checked against the bad one.
    for attempt in range(200):
        crafted = child_of(repo, v1, f"swapped {attempt}", partitions=partitions)
        crafted_id = repo.store.put_manifest(encode_manifest(crafted))
        if crafted_id > v1:
            break
        repo.store.manifest_path(crafted_id).unlink()
    repo.store.write_ref("main", crafted_id)
    return crafted_id, wrong_object


@pytest.mark.parametrize("how", ["new-parquet-file", "another-partitions-object"])
def test_deep_verify_catches_a_valid_hash_object_whose_content_disagrees_with_the_manifest(filled_repo, tmp_path, how):
    crafted_id, wrong_object = _swap_in_other_content(filled_repo, how)
    shallow = filled_repo.verify()
    assert shallow.ok, shallow.problems  # every byte hashes right: only decoding can tell
    deep = filled_repo.verify(deep=True)
    assert not deep.ok
    assert problems_with(deep, short(wrong_object), "2024-02", "differs"), deep.problems
    with pytest.raises(CorruptObject, match="2024-02"):
        filled_repo.checkout(crafted_id, tmp_path / "other")
    assert not (tmp_path / "other").exists()


# ---- gc -------------------------------------------------------------------------------------------


def _v2_then_reset_to_v1(repo: Repository) -> tuple[str, str, set[str]]:
    """v2 changes one month; main is then moved back to v1. Returns (v1, v2, objects only v2 uses)."""
    v1 = repo.head()
    chunks = make_chunks(60)
    chunks[-1]["text"] = "edited in v2"
    write_cache(repo.cache_path, chunks, make_embeddings(60), index={"newsletters": 6, "edited": True})
    v2 = repo.snapshot("v2").id
    only_v2 = {p.object + PARQUET for p in repo.manifest(v2).partitions} - {p.object + PARQUET for p in repo.manifest(v1).partitions}
    only_v2.add(repo.manifest(v2).index + JSON)
    assert len(only_v2) == 2
    repo.store.write_ref("main", v1)
    return v1, v2, only_v2


def test_gc_deletes_the_objects_and_manifest_of_a_version_no_ref_reaches(filled_repo, tmp_path):
    v1, v2, only_v2 = _v2_then_reset_to_v1(filled_repo)
    result = filled_repo.gc()
    assert set(result.objects) == only_v2
    assert result.manifests == [v2]
    assert result.bytes_freed > 0
    assert not filled_repo.store.manifest_path(v2).exists()
    remaining = {object_id + suffix for object_id, suffix, _ in filled_repo.store.iter_objects()}
    assert not remaining & only_v2
    report = filled_repo.verify(deep=True)
    assert report.ok and report.notes == [], (report.problems, report.notes)
    filled_repo.checkout("v1", tmp_path / "out")
    assert load_cache(tmp_path / "out")[1]["chunks"] == make_chunks(60)
    assert filled_repo.gc().objects == []  # nothing more to delete


def test_gc_dry_run_lists_what_it_would_delete_and_deletes_nothing(filled_repo):
    _, v2, only_v2 = _v2_then_reset_to_v1(filled_repo)
    (filled_repo.store.tmp_dir / "123-deadbeef.parquet").write_bytes(b"partial")
    before = repo_tree(filled_repo.root)
    result = filled_repo.gc(dry_run=True)
    assert result.dry_run and set(result.objects) == only_v2 and result.manifests == [v2]
    assert result.temp_files == ["123-deadbeef.parquet"]
    assert repo_tree(filled_repo.root) == before


def test_gc_keeps_what_a_tag_still_reaches(filled_repo):
    _, v2, _ = _v2_then_reset_to_v1(filled_repo)
    filled_repo.tag("keep", v2)
    before = repo_tree(filled_repo.root)
    result = filled_repo.gc()
    assert result.objects == [] and result.manifests == []
    assert repo_tree(filled_repo.root) == before
    assert filled_repo.verify(deep=True).ok


def _fake_leftovers(repo: Repository) -> list[Path]:
    """Files as an interrupted command leaves them: partition temps in tmp/, and the
    `.NAME.XXXX.tmp` temps of atomic writes next to refs, manifests, objects and state.json."""
    store, head = repo.store, repo.head()
    some_object = next(store.iter_objects())[2]
    leftovers = [
        store.tmp_dir / "4242-0123456789abcdef.parquet",
        store.refs_dir / ".main.k2j3h4.tmp",
        store.refs_dir / "tags" / ".release.a8d7f6.tmp",
        store.manifests_dir / f".{head}.json.x9y8z7.tmp",
        some_object.parent / f".{'ab' * 32}.json.q1w2e3.tmp",
        store.root / ".state.json.zz11yy.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half-written")
    return leftovers


def test_gc_deletes_temp_files_left_by_interrupted_commands(filled_repo):
    leftovers = _fake_leftovers(filled_repo)
    report = filled_repo.verify()
    assert report.ok, report.problems
    assert any("temporary files" in n for n in report.notes), report.notes
    result = filled_repo.gc()
    assert sorted(result.temp_files) == sorted(p.name for p in leftovers)
    assert [p for p in leftovers if p.exists()] == []
    assert filled_repo.verify().notes == []
    assert filled_repo.head() and filled_repo.verify(deep=True).ok


def test_gc_dry_run_keeps_temp_files(filled_repo):
    leftovers = _fake_leftovers(filled_repo)
    result = filled_repo.gc(dry_run=True)
    assert sorted(result.temp_files) == sorted(p.name for p in leftovers)
    assert all(p.exists() for p in leftovers)


def test_gc_refuses_to_run_when_a_ref_is_damaged_and_deletes_nothing(filled_repo):
    # A damaged tag might have protected versions: deleting what it reached would lose data.
    _v2_then_reset_to_v1(filled_repo)
    (filled_repo.store.refs_dir / "tags" / "keep").write_text("garbage")
    before = repo_tree(filled_repo.root)
    with pytest.raises(CorruptObject, match="refs/tags/keep"):
        filled_repo.gc()
    assert repo_tree(filled_repo.root) == before


def test_gc_refuses_to_run_when_a_reachable_manifest_is_missing_and_deletes_nothing(filled_repo):
    v1 = filled_repo.head()
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61), index={"newsletters": 6})
    filled_repo.snapshot("v2")
    filled_repo.store.manifest_path(v1).unlink()
    before = repo_tree(filled_repo.root)
    with pytest.raises((MissingObject, CorruptObject)):
        Repository.open(filled_repo.root).gc()
    assert repo_tree(filled_repo.root) == before
