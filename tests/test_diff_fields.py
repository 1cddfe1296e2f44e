"""`diff` reports every changed field of every chunk (issue 9 item 6): text, embedding, each metadata field
and any unknown field, whichever Parquet layout (typed column or `extra` JSON) holds it on either side;
counts and ids, in text and `--json`; a chunk whose date moved it to another partition is changed, not
removed and added."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.cli import app

INDEX = {"newsletters": 6}


def snap(repo: Repository, chunks: list[dict[str, Any]], embeddings: np.ndarray | None = None) -> None:
    write_cache(repo.cache_path, chunks, make_embeddings(len(chunks)) if embeddings is None else embeddings, index=INDEX)
    repo.snapshot("", allow_nonfinite=True)


def test_metadata_edits_are_counted_per_field_with_their_ids(filled_repo: Repository) -> None:
    chunks = make_chunks(60)
    chunks[1]["section_title"] = "Nova seção"
    chunks[2]["newsletter_path"] = "newsletters/renamed.md"
    chunks[13]["newsletter_date"] = "2024-02-27"  # same month: no move
    chunks[24]["source_lang"] = "pt"  # an unknown field appears
    chunks[35]["char_count"] += 1
    chunks[46]["chunk_index_in_newsletter"] = 99
    snap(filled_repo, chunks)
    result = filled_repo.diff("v1", "v2", ids=True)
    assert result.chunks.fields == {
        "newsletter_date": 1, "newsletter_path": 1, "section_title": 1, "char_count": 1,
        "chunk_index_in_newsletter": 1, "source_lang": 1,
    }
    assert (result.chunks.changed, result.chunks.text_changed, result.chunks.embedding_changed) == (6, 0, 0)
    assert result.ids.fields == {
        "newsletter_date": [13], "newsletter_path": [2], "section_title": [1], "char_count": [35],
        "chunk_index_in_newsletter": [46], "source_lang": [24],
    }
    assert result.ids.changed == [1, 2, 13, 24, 35, 46] and result.ids.moved == []


def test_the_cli_prints_each_changed_field_and_its_ids(filled_repo: Repository) -> None:
    chunks = make_chunks(60)
    chunks[41]["section_title"] = "outra"
    chunks[5]["newsletter_date"] = "2024-03-15"  # January -> March
    snap(filled_repo, chunks)
    runner = CliRunner()
    text = runner.invoke(app, ["-C", str(filled_repo.root), "diff", "v1", "v2", "--ids"]).stdout
    assert "chunks: 0 added, 0 removed, 2 changed (0 text changed, 0 embedding changed, 1 moved to another partition)" in text
    assert "fields changed: newsletter_date 1, section_title 1" in text
    assert "  section_title changed: 41\n" in text and "  moved: 5\n" in text and "  newsletter_date changed: 5\n" in text
    as_json = json.loads(runner.invoke(app, ["-C", str(filled_repo.root), "diff", "v1", "v2", "--json"]).stdout)
    assert as_json["chunks"]["fields"] == {"newsletter_date": 1, "section_title": 1}
    assert as_json["chunks"]["moved"] == 1 and as_json["ids"] is None


def test_a_layout_switch_of_a_partition_changes_only_the_chunk_that_caused_it(filled_repo: Repository) -> None:
    # Chunk 13's section_title becomes a number: February keeps section_title in `extra` from then on.
    chunks = make_chunks(60)
    chunks[13]["section_title"] = 5
    snap(filled_repo, chunks)
    assert filled_repo.diff("v1", "v2", ids=True).ids.fields == {"section_title": [13]}
    del chunks[13]["section_title"]  # 5 -> missing
    snap(filled_repo, chunks)
    assert filled_repo.diff("v2", "v3", ids=True).ids.fields == {"section_title": [13]}
    chunks[13]["section_title"] = None  # missing -> explicit null is a change too
    snap(filled_repo, chunks)
    assert filled_repo.diff("v3", "v4", ids=True).ids.fields == {"section_title": [13]}
    assert filled_repo.diff("v1", "v4", ids=True).ids.fields == {"section_title": [13]}


def test_a_date_written_differently_is_a_changed_date(filled_repo: Repository) -> None:
    chunks = make_chunks(60)
    chunks[7]["newsletter_date"] += "T00:00:00"  # the same day, another string: the cache differs
    snap(filled_repo, chunks)
    result = filled_repo.diff("v1", "v2", ids=True)
    assert result.ids.fields == {"newsletter_date": [7]} and result.ids.moved == []


def test_unknown_fields_compare_by_exact_json_value(filled_repo: Repository) -> None:
    chunks = make_chunks(60)
    chunks[20]["meta"] = {"a": 1, "b": [1, 2]}
    chunks[21]["score"] = 1
    snap(filled_repo, chunks)
    chunks[20]["meta"] = {"b": [1, 2], "a": 1}  # the same keys in another order: another file
    chunks[21]["score"] = 1.0  # 1 and 1.0 differ in the JSON the pipeline reads back
    chunks[22]["score"] = float("nan")
    snap(filled_repo, chunks)
    assert filled_repo.diff("v2", "v3", ids=True).ids.fields == {"meta": [20], "score": [21, 22]}
    chunks[23]["text"] = "edited next to the NaN"  # same month as the NaN: NaN stays equal to NaN
    snap(filled_repo, chunks)
    assert filled_repo.diff("v3", "v4", ids=True).ids.fields == {"text": [23]}


# ---- property: the diff's fields are exactly the fields whose values differ ------------------------------

FIELDS = ["newsletter_date", "newsletter_path", "section_title", "text", "char_count", "chunk_index_in_newsletter",
          "source_lang", "tags"]
VALUES = st.one_of(
    st.none(), st.integers(-3, 3), st.text(max_size=3), st.booleans(), st.lists(st.integers(0, 2), max_size=2),
    st.just("__missing__"),
)
DATES = st.sampled_from(["2024-01-05", "2024-01-20", "2024-02-03", "2024-05-31", "2024-02-03T10:00:00", "20240203"])
EDITS = st.lists(
    st.tuples(st.integers(0, 19), st.sampled_from(FIELDS), VALUES, DATES), min_size=1, max_size=8
)


def _apply(chunks: list[dict[str, Any]], edits: list[tuple[int, str, Any, str]]) -> list[dict[str, Any]]:
    edited = copy.deepcopy(chunks)
    for row, field, value, date in edits:
        if field == "newsletter_date":
            edited[row][field] = date
        elif value == "__missing__":
            edited[row].pop(field, None)
        else:
            edited[row][field] = value
    return edited


def _expected(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, list[int]]:
    fields: dict[str, list[int]] = {}
    for a, b in zip(old, new):
        for key in sorted(a.keys() | b.keys()):
            if key in a and key in b and json.dumps(a[key]) == json.dumps(b[key]):
                continue
            fields.setdefault(key, []).append(a["chunk_id"])
    return fields


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=EDITS, second=EDITS, vector_rows=st.sets(st.integers(0, 19), max_size=3))
def test_diff_fields_are_exactly_the_fields_whose_values_differ(first, second, vector_rows) -> None:
    base = make_chunks(20, months=5)
    old, new = _apply(base, first), _apply(_apply(base, first), second)
    old_vectors = make_embeddings(20, dim=4)
    new_vectors = old_vectors.copy()
    for row in vector_rows:
        new_vectors[row, 0] += 1
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository.init(Path(tmp), cache="cache/rag", model="m")
        write_cache(repo.cache_path, old, old_vectors)
        repo.snapshot("old")
        write_cache(repo.cache_path, new, new_vectors)
        repo.snapshot("new")
        if len(repo.log()) == 1:
            return  # the edits cancelled out
        result = repo.diff("v1", "v2", ids=True)
    expected = _expected(old, new)
    if vector_rows:
        expected["embedding"] = sorted(vector_rows)
    assert result.ids.fields == expected
    assert list(result.chunks.fields) == list(result.ids.fields)  # the same fields, in the same order
    assert result.ids.changed == sorted({i for ids in expected.values() for i in ids})
    assert result.ids.added == result.ids.removed == []
