"""Sample caches (egregora_ds.sample) plus a smoke test of the benchmark baseline and floors."""

from __future__ import annotations

import json
import pickle
from datetime import date

import numpy as np
import pytest

from egregora_ds.sample import append_month, delete_chunk, edit_chunk, main, write_sample_cache

FILES = ("embeddings.pkl", "metadata.json", "index.json")


def load(path):
    with open(path / "embeddings.pkl", "rb") as f:
        arr = pickle.load(f)["embeddings"]
    with open(path / "metadata.json", encoding="utf-8") as f:
        chunks = json.load(f)["chunks"]
    with open(path / "index.json", encoding="utf-8") as f:
        index = json.load(f)
    return arr, chunks, index


@pytest.fixture
def cache(tmp_path):
    write_sample_cache(tmp_path / "c", 600, dim=32, months=6, seed=7)
    return tmp_path / "c"


def test_the_same_seed_writes_the_same_bytes_in_all_three_files(tmp_path):
    for name in "ab":
        write_sample_cache(tmp_path / name, 500, dim=16, months=4, seed=3)
    for f in FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_a_different_seed_writes_different_data(tmp_path):
    write_sample_cache(tmp_path / "a", 300, dim=16, months=4, seed=1)
    write_sample_cache(tmp_path / "b", 300, dim=16, months=4, seed=2)
    for f in FILES:
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "b" / f).read_bytes(), f


def test_the_cache_has_the_pipeline_shapes_types_and_fields(tmp_path):
    info = write_sample_cache(tmp_path / "c", 1000, dim=48, months=5)
    arr, chunks, index = load(tmp_path / "c")
    assert (info.rows, info.dim, info.months) == (1000, 48, 5)
    assert arr.shape == (1000, 48) and arr.dtype == np.float32 and arr.flags.c_contiguous
    assert [c["chunk_id"] for c in chunks] == list(range(1000))
    base = ["chunk_id", "newsletter_date", "newsletter_path", "section_title", "text", "char_count",
            "chunk_index_in_newsletter"]
    assert all(list(c)[:7] == base and set(c) <= set(base) | {"source_lang"} for c in chunks)
    assert all(c["char_count"] == len(c["text"]) for c in chunks)
    assert all(40 <= len(c["text"].split()) <= 260 for c in chunks)
    assert sum(v["chunks"] for v in index["newsletters"].values()) == 1000


def test_vectors_are_unit_norm(cache):
    arr, _, _ = load(cache)
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)


def test_dates_are_sorted_and_spread_over_every_month(tmp_path):
    info = write_sample_cache(tmp_path / "c", 2000, dim=8, months=12, start=date(2024, 3, 1))
    _, chunks, _ = load(tmp_path / "c")
    dates = [c["newsletter_date"] for c in chunks]
    assert dates == sorted(dates)
    assert {d[:7] for d in dates} == {f"{2024 + (2 + m) // 12}-{(2 + m) % 12 + 1:02d}" for m in range(12)}
    assert info.first_date.isoformat() == dates[0] and info.last_date.isoformat() == dates[-1]


def test_chunk_index_counts_within_each_newsletter(cache):
    _, chunks, _ = load(cache)
    expected: dict = {}
    for c in chunks:
        assert c["newsletter_path"].endswith(c["newsletter_date"] + ".md")
        assert c["chunk_index_in_newsletter"] == expected.get(c["newsletter_path"], 0)
        expected[c["newsletter_path"]] = c["chunk_index_in_newsletter"] + 1


def test_texts_look_portuguese_with_accents_emoji_and_some_null_sections(cache):
    _, chunks, _ = load(cache)
    text = " ".join(c["text"] for c in chunks)
    for token in ("não", "ação", "🚀"):
        assert token in text
    nulls = sum(c["section_title"] is None for c in chunks) / len(chunks)
    unknown = sum("source_lang" in c for c in chunks) / len(chunks)
    assert 0.1 < nulls < 0.4 and 0.05 < unknown < 0.15


def test_metadata_bytes_are_what_json_dump_would_write(cache):
    meta = json.loads((cache / "metadata.json").read_text(encoding="utf-8"))
    assert (cache / "metadata.json").read_text(encoding="utf-8") == json.dumps(meta, ensure_ascii=False)


def test_unknown_field_can_be_turned_off(tmp_path):
    write_sample_cache(tmp_path / "c", 300, dim=8, months=2, unknown_field=False)
    assert not any("source_lang" in c for c in load(tmp_path / "c")[1])


def test_editing_a_chunk_changes_only_that_chunks_text_and_vector(cache):
    arr0, chunks0, _ = load(cache)
    change = edit_chunk(cache, 123, text="Nova versão do coração 🚀")
    arr1, chunks1, _ = load(cache)
    assert change.kind == "edit" and change.chunk_ids == (123,) and change.rows == 600
    changed_rows = np.flatnonzero((arr0 != arr1).any(axis=1))
    assert changed_rows.tolist() == [123]
    assert abs(np.linalg.norm(arr1[123]) - 1) < 1e-5
    assert [i for i, (a, b) in enumerate(zip(chunks0, chunks1)) if a != b] == [123]
    assert chunks1[123]["text"] == "Nova versão do coração 🚀" and chunks1[123]["char_count"] == 24


def test_editing_only_the_vector_keeps_the_metadata_bytes(cache):
    before = (cache / "metadata.json").read_bytes()
    edit_chunk(cache, 5)
    assert (cache / "metadata.json").read_bytes() == before


def test_deleting_a_chunk_removes_its_row_and_its_metadata(cache):
    arr0, chunks0, _ = load(cache)
    change = delete_chunk(cache, 200)
    arr1, chunks1, index = load(cache)
    assert change.rows == 599 and arr1.shape == (599, 32) and len(chunks1) == 599
    assert 200 not in {c["chunk_id"] for c in chunks1}
    np.testing.assert_array_equal(arr1, np.delete(arr0, 200, axis=0))
    assert chunks1 == chunks0[:200] + chunks0[201:]
    assert sum(v["chunks"] for v in index["newsletters"].values()) == 599


def test_appending_a_month_adds_new_ids_in_the_following_month(cache):
    arr0, chunks0, _ = load(cache)
    change = append_month(cache, 150)
    arr1, chunks1, index = load(cache)
    assert change.kind == "append" and change.chunk_ids == tuple(range(600, 750)) and change.rows == 750
    assert change.month == "2024-07"
    np.testing.assert_array_equal(arr1[:600], arr0)
    assert chunks1[:600] == chunks0 and all(c["newsletter_date"][:7] == "2024-07" for c in chunks1[600:])
    assert [c["chunk_id"] for c in chunks1[600:]] == list(range(600, 750))
    assert arr1.shape == (750, 32) and sum(v["chunks"] for v in index["newsletters"].values()) == 750


def test_appending_after_a_delete_continues_after_the_largest_id(cache):
    delete_chunk(cache, 599)
    assert append_month(cache, 10).chunk_ids == tuple(range(599, 609))
    append_month(cache, 10)
    assert load(cache)[1][-1]["newsletter_date"][:7] == "2024-08"


def test_the_cli_prints_one_line(tmp_path, capsys):
    main([str(tmp_path / "c"), "--rows", "200", "--dim", "8", "--months", "2", "--seed", "1"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "200 chunks" in out and load(tmp_path / "c")[0].shape == (200, 8)


# --- benchmarks smoke test (2k rows, ~1-2 s: two spawned processes dominate) ---------------------------------------

def test_the_seed_baseline_and_the_floors_run_and_round_trip_the_vectors(tmp_path):
    from benchmarks import floors
    from benchmarks.seed_exporter import export_like_seed, read_seed_export

    write_sample_cache(tmp_path / "c", 2000, dim=64, months=3)
    arr, chunks, _ = load(tmp_path / "c")
    report = export_like_seed(tmp_path / "c", tmp_path / "seed")
    assert report["rows"] == 2000 and report["files"] == 3 and report["bytes"] > 0
    ids, vectors = read_seed_export(tmp_path / "seed")
    assert ids.tolist() == list(range(2000))
    np.testing.assert_array_equal(vectors, arr)

    table = floors.build_arrow_table(tmp_path / "c")
    assert table.num_rows == 2000 and str(table.schema.field("embedding").type) == "fixed_size_list<item: float>[64]"
    np.testing.assert_array_equal(table.column("embedding").chunk(0).flatten().to_numpy().reshape(2000, 64), arr)
    once = dict(repeat=1, warmup=0)
    w = floors.plain_parquet_write(table, tmp_path / "floor", **once)
    assert w["pyarrow_bytes"] > 0 and w["polars_bytes"] > 0 and w["pyarrow_s"] > 0
    import pyarrow.parquet as pq
    meta = pq.ParquetFile(tmp_path / "floor" / "floor-pyarrow.parquet").metadata.row_group(0)
    assert "BYTE_STREAM_SPLIT" in meta.column(7).encodings  # the BSS option reached the vector leaf
    assert floors.load_cache(tmp_path / "c", **once)["json_msgspec_s"] > 0
    assert floors.blake3_bytes([tmp_path / "c" / f for f in FILES], **once)["bytes"] > 0
    d = floors.dump_cache(arr, chunks, tmp_path / "dump", **once)
    assert (tmp_path / "dump" / "metadata.json").read_bytes() == (tmp_path / "c" / "metadata.json").read_bytes()
    assert d["pickle5_s"] > 0
    assert floors.sequential_write_fsync(1 << 20, tmp_path / "seq", **once)["bytes"] == 1 << 20
    assert floors.timed(sum, [1, 2], repeat=2, warmup=0) >= 0

    result, peak = floors.peak_rss_of(floors.touch, 50_000_000)
    assert result == 50_000_000 and peak > 50_000_000
