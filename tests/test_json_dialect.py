"""The JSON egds writes outside the typed columns (SPEC.md §6 and §11.3): Python's stdlib dialect,
byte for byte, so a second implementation can agree with it: NaN/Infinity tokens, integers of any
size, floats as repr(), non-ASCII as UTF-8 unless a lone surrogate forces \\u escapes."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_embeddings
from egregora_ds import Repository
from egregora_ds.cache import encode_json
from egregora_ds.errors import CorruptObject
from egregora_ds.metadata_json import chunk_objects, metadata_pieces
from egregora_ds.model import OrderRun


def _join(pieces) -> bytes:
    return b"".join(bytes(p) for p in pieces)


def _stdlib(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_encode_json_is_the_stdlib_compact_dialect_with_an_escaping_fallback(value) -> None:
    try:
        expected = _stdlib(value)
    except UnicodeEncodeError:  # a lone surrogate somewhere
        expected = json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()
    assert encode_json(value) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e16, b"1e+16"),
        (1e-5, b"1e-05"),
        (0.0001, b"0.0001"),
        (123.0, b"123.0"),
        (-0.0, b"-0.0"),
        (float("nan"), b"NaN"),
        (float("inf"), b"Infinity"),
        (float("-inf"), b"-Infinity"),
        (2**64, b"18446744073709551616"),
        (-(10**30), b"-1000000000000000000000000000000"),
        ("é\u2028\x7f", "\"é\u2028\x7f\"".encode()),
        ("\x00\x1f\"\\", b'"\\u0000\\u001f\\"\\\\"'),
        ("\ud83d é", b'"\\ud83d \\u00e9"'),
    ],
)
def test_each_token_of_the_dialect(value, text: bytes) -> None:
    assert encode_json(value) == text


def test_metadata_extras_follow_the_chunks_in_the_stdlib_dialect() -> None:
    # msgspec writes 1e16 and 0.00001; the spec's dialect is json.dumps': 1e+16 and 1e-05.
    extras = {"big": 1e16, "small": 1e-5, "huge": 10**30, "name": "ação"}
    document = _join(metadata_pieces([], (), extras))
    assert document == b'{"chunks":[],"big":1e+16,"small":1e-05,"huge":1000000000000000000000000000000,' + (
        '"name":"ação"}'.encode()
    )


def test_metadata_extras_with_a_lone_surrogate_are_escaped_not_a_crash() -> None:
    document = _join(metadata_pieces([], (), {"a": "\ud800", "b": "é"}))
    assert document == b'{"chunks":[],"a":"\\ud800","b":"\\u00e9"}'


def _table(rows: list[dict], extra: list[str | None]) -> pa.Table:
    return pa.table({
        "chunk_id": pa.array([r["chunk_id"] for r in rows], pa.int64()),
        "newsletter_date": pa.array([r["newsletter_date"] for r in rows], pa.string()).cast(pa.date32()),
        "text": pa.array([r["text"] for r in rows], pa.string()),
        "extra": pa.array(extra, pa.string()),
    })


def test_a_chunk_whose_extra_holds_its_date_gets_the_stored_extra_text_verbatim() -> None:
    # It used to be re-encoded with msgspec (1e16) while every other chunk's extra was spliced (1e+16).
    rows = [
        {"chunk_id": 1, "newsletter_date": "2024-01-04", "text": "a"},
        {"chunk_id": 2, "newsletter_date": "2024-01-04", "text": "b"},
    ]
    extra = ['{"score":1e+16}', '{"newsletter_date":"2024-01-04T10:00:00","score":1e+16}']
    objects = chunk_objects(_table(rows, extra), "t")
    document = _join(metadata_pieces([objects], (OrderRun(0, 2),), {}))
    assert document == (
        b'{"chunks":[{"chunk_id":1,"newsletter_date":"2024-01-04","text":"a","score":1e+16},'
        b'{"chunk_id":2,"text":"b","newsletter_date":"2024-01-04T10:00:00","score":1e+16}]}'
    )


def test_a_chunk_with_its_own_date_and_a_lone_surrogate_checks_out_instead_of_crashing() -> None:
    rows = [{"chunk_id": 7, "newsletter_date": "2024-01-04", "text": "a"}]
    extra = ['{"newsletter_date":"20240104","note":"\\ud83d"}']
    document = _join(metadata_pieces([chunk_objects(_table(rows, extra), "t")], (OrderRun(0, 1),), {}))
    assert document == b'{"chunks":[{"chunk_id":7,"text":"a","newsletter_date":"20240104","note":"\\ud83d"}]}'
    assert json.loads(document)["chunks"][0]["note"] == "\ud83d"


@pytest.mark.parametrize("extra", [' {"x":1}', '{"x":1} ', '\n{"x":1}'])
def test_an_extra_text_with_space_around_its_braces_is_damage_not_spliced_into_bad_json(extra: str) -> None:
    rows = [{"chunk_id": 1, "newsletter_date": "2024-01-04", "text": "a"}]
    with pytest.raises(CorruptObject, match="row 0's `extra`"):
        chunk_objects(_table(rows, [extra]), "object x")


def _write_raw_cache(path: Path, chunks: list, embeddings: np.ndarray, metadata_extra: dict) -> None:
    """A cache as a pipeline could write it with json.dump's default ensure_ascii=True: the only way
    a lone surrogate reaches metadata.json."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": embeddings}, f)
    (path / "metadata.json").write_text(json.dumps({"chunks": chunks, **metadata_extra}), encoding="ascii")


def test_a_lone_surrogate_in_a_metadata_extra_is_recorded_and_restored(repo: Repository, tmp_path: Path) -> None:
    chunks = [{"chunk_id": 1, "newsletter_date": "2024-01-04", "text": "a"}]
    _write_raw_cache(repo.cache_path, chunks, make_embeddings(1, dim=2), {"broken": "x\udc80y", "ratio": 1e-7})
    repo.snapshot("surrogate")
    manifest = repo.resolve("latest")[1]
    stored = repo.store.read_object(manifest.extras, ".json")
    assert stored == b'{"metadata":{"broken":"x\\udc80y","ratio":1e-07},"pickle":{}}'
    repo.checkout("latest", cache=tmp_path / "out")
    metadata = (tmp_path / "out" / "metadata.json").read_bytes()
    assert metadata.endswith(b'],"broken":"x\\udc80y","ratio":1e-07}')
    assert json.loads(metadata)["broken"] == "x\udc80y"


def test_nonfinite_and_huge_values_in_extras_survive_a_round_trip(repo: Repository, tmp_path: Path) -> None:
    chunks = [{"chunk_id": 1, "newsletter_date": "2024-01-04", "text": "a", "w": float("inf")}]
    _write_raw_cache(repo.cache_path, chunks, make_embeddings(1, dim=2), {"n": float("nan"), "big": 2**100})
    repo.snapshot("odd numbers")
    repo.checkout("latest", cache=tmp_path / "out")
    metadata = (tmp_path / "out" / "metadata.json").read_bytes()
    assert metadata == (
        b'{"chunks":[{"chunk_id":1,"newsletter_date":"2024-01-04","text":"a","w":Infinity}],'
        b'"n":NaN,"big":1267650600228229401496703205376}'
    )
    assert math.isnan(json.loads(metadata)["n"])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b'{"chunks": [], "n": ' + b"9" * 5000 + b"}", "integer longer than 4300 digits"),
        (b'{"chunks": [], "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}", "too deeply"),
    ],
)
def test_json_that_python_cannot_hold_is_a_one_line_cache_error(tmp_path: Path, document: bytes, message: str) -> None:
    from egregora_ds.cache import decode_json
    from egregora_ds.errors import CacheError

    with pytest.raises(CacheError, match=message) as error:
        decode_json(document, tmp_path / "metadata.json")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("document", "value"),
    [
        ('\ufeff{"chunks": []}'.encode("utf-8"), {"chunks": []}),
        ('{"chunks": [], "t": "é"}'.encode("utf-16"), {"chunks": [], "t": "é"}),
        (b'{"chunks": [], "x": 1e400, "y": NaN}', None),
        (b'{"chunks": [], "a": 1, "a": 2}', {"chunks": [], "a": 2}),
    ],
)
def test_cache_json_is_read_as_pythons_json_loads_reads_it(tmp_path: Path, document: bytes, value) -> None:
    from egregora_ds.cache import decode_json

    decoded = decode_json(document, tmp_path / "metadata.json")
    if value is None:
        assert decoded["x"] == float("inf") and math.isnan(decoded["y"])
    else:
        assert decoded == value
