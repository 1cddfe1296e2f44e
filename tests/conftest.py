"""Shared fixtures: write small pickle caches exactly as the newsletter pipeline does."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from egregora_ds import Repository


def write_cache(
    path: Path,
    chunks: list[dict[str, Any]],
    embeddings: np.ndarray,
    *,
    metadata_extra: dict[str, Any] | None = None,
    pickle_extra: dict[str, Any] | None = None,
    index: Any = None,
) -> Path:
    """Write embeddings.pkl / metadata.json / index.json the way the pipeline does (stdlib pickle and json)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": embeddings, **(pickle_extra or {})}, f)
    with open(path / "metadata.json", "w", encoding="utf-8") as f:
        json.dump({"chunks": chunks, **(metadata_extra or {})}, f, ensure_ascii=False)
    if index is not None:
        (path / "index.json").write_text(json.dumps(index, ensure_ascii=False), encoding="utf-8")
    elif (path / "index.json").exists():
        (path / "index.json").unlink()
    return path


def make_chunks(n: int, months: int = 6, start_year: int = 2024, seed: int = 0) -> list[dict[str, Any]]:
    """n chunks sorted by date, spread over `months` months."""
    rng = np.random.default_rng(seed)
    chunks = []
    for i in range(n):
        month = i * months // max(n, 1)
        year, mon = start_year + month // 12, month % 12 + 1
        day = 1 + (i % 28)
        date = f"{year:04d}-{mon:02d}-{day:02d}"
        text = " ".join(rng.choice(["ação", "não", "coração", "dados", "🚀", "notícia"], size=5 + i % 7))
        chunks.append(
            {
                "chunk_id": i,
                "newsletter_date": date,
                "newsletter_path": f"newsletters/{date}.md",
                "section_title": None if i % 4 == 0 else f"Seção {i % 3}",
                "text": text,
                "char_count": len(text),
                "chunk_index_in_newsletter": i % 5,
            }
        )
    return chunks


def make_embeddings(n: int, dim: int = 16, seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(dtype)
    return vectors


def load_cache(path: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(pickle dict, metadata dict, index or None) loaded with plain pickle/json, as the pipeline would."""
    with open(path / "embeddings.pkl", "rb") as f:
        pickled = pickle.load(f)
    metadata = json.loads((path / "metadata.json").read_text(encoding="utf-8"))
    index = json.loads((path / "index.json").read_text(encoding="utf-8")) if (path / "index.json").exists() else None
    return pickled, metadata, index


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """An empty repository whose cache is `cache/rag` under tmp_path."""
    return Repository.init(tmp_path, cache="cache/rag", partitioning="month", model="test-model")


@pytest.fixture
def filled_repo(repo: Repository) -> Repository:
    """A repository with a 60-chunk, 6-month cache recorded as v1."""
    write_cache(repo.cache_path, make_chunks(60), make_embeddings(60), index={"newsletters": 6})
    repo.snapshot("v1")
    return repo


# ---- helpers added for the bad-input / crash-safety / verify-gc / CLI tests -----------------------


def repo_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root/.egds` (relative name -> bytes), except the lock file, whose pid
    changes whenever any command takes the lock. Two equal trees mean nothing was written."""
    base = root / ".egds"
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.relative_to(base).as_posix() != "lock"
    }


def dir_tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative name -> bytes); empty if `path` does not exist."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte of a file (the middle one by default), keeping its size."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def object_files(repo: Repository) -> set[str]:
    """Names of every file under `.egds/objects` (partition and JSON objects alike)."""
    return {p.name for p in repo.store.objects_dir.rglob("*") if p.is_file()}


def parquet_objects(repo: Repository) -> set[str]:
    return {name for name in object_files(repo) if name.endswith(".parquet")}
