"""Shared fixtures: write small pickle caches exactly as the newsletter pipeline does."""

from __future__ import annotations

import json
import os
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


# ---- helpers added for the push/clone acceptance and fault tests ----------------------------------


def assert_same_cache(actual: Path, expected: Path) -> None:
    """The cache at `actual` is what the pipeline wrote at `expected`: the array bit for bit (dtype,
    shape, bytes), every other pickle entry equal, metadata.json and index.json equal as parsed JSON."""
    got_pickle, got_meta, got_index = load_cache(actual)
    want_pickle, want_meta, want_index = load_cache(expected)
    got, want = got_pickle.pop("embeddings"), want_pickle.pop("embeddings")
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    assert got.tobytes() == want.tobytes()
    assert got_pickle == want_pickle
    assert got_meta == want_meta
    assert got_index == want_index


# ---- helpers added for the remote conformance and remote error tests ------------------------------


class RemoteBackend:
    """One remote backend as the conformance/error suites see it: its URL, plus test-only views of what it
    holds and what was written to it (no request goes through egds for these)."""

    def __init__(self, kind: str, url: str, *, emu: Any = None, path: Path | None = None, monkeypatch: Any = None) -> None:
        self.kind, self.url, self.emu, self.path, self._monkeypatch = kind, url, emu, path, monkeypatch

    def __repr__(self) -> str:
        return f"RemoteBackend({self.url})"

    @property
    def identifier(self) -> str:
        return self.url.removeprefix("ia:")

    def remote(self) -> Any:
        from egregora_ds.remotes import open_remote

        return open_remote(self.url)

    def settle(self) -> None:
        """Make every upload visible in the listing (IA's metadata lag); a no-op elsewhere."""
        if self.emu is not None:
            self.emu.settle()

    def stored(self) -> dict[str, bytes]:
        """Every key the remote holds right now -> its bytes (IA: without `history/` copies)."""
        if self.kind == "ia":
            return {k: v for k, v in self.emu.files(self.identifier).items() if not k.startswith("history/")}
        if self.kind == "memory":
            from egregora_ds.store.memory import memory_remote

            return dict(memory_remote(self.url.removeprefix("memory:")).files)
        return dir_tree(self.path) if self.path is not None else {}

    def put_raw(self, key: str, data: bytes) -> None:
        """Store bytes behind egds's back (to craft a damaged remote); not counted as a write."""
        if self.kind == "ia":
            self.emu.put_file(self.identifier, key, data)
        elif self.kind == "memory":
            from egregora_ds.store.memory import memory_remote

            memory_remote(self.url.removeprefix("memory:")).files[key] = data
        else:
            target = self.path.joinpath(*key.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def delete_raw(self, key: str) -> None:
        """Remove a key behind egds's back (to craft an incomplete remote). IA: an S3 DELETE, as `ia delete` does."""
        if self.kind == "ia":
            response = self.emu.session().delete(
                f"http://s3.us.archive.org/{self.identifier}/{key}", headers={"Authorization": "LOW test-access:test-secret"}
            )
            assert response.status_code == 204, response.text
        elif self.kind == "memory":
            from egregora_ds.store.memory import memory_remote

            del memory_remote(self.url.removeprefix("memory:")).files[key]
        else:
            self.path.joinpath(*key.split("/")).unlink()

    def mark(self) -> Any:
        """A point to compare `writes_since` against."""
        if self.kind == "ia":
            return len(self.emu.requests)
        if self.kind == "memory":
            from egregora_ds.store.memory import memory_remote

            return len(memory_remote(self.url.removeprefix("memory:")).puts)
        return self._dir_state()

    def writes_since(self, mark: Any) -> list[str]:
        """Keys written since `mark`: IA every PUT attempted (whatever its answer), memory every put,
        a directory every file created or replaced (a new inode, size or mtime)."""
        if self.kind == "ia":
            prefix = f"/{self.identifier}/"
            return [r.path.removeprefix(prefix) for r in self.emu.requests[mark:] if r.method in ("PUT", "DELETE")]
        if self.kind == "memory":
            from egregora_ds.store.memory import memory_remote

            return memory_remote(self.url.removeprefix("memory:")).puts[mark:]
        now = self._dir_state()
        return sorted(k for k, v in now.items() if mark.get(k) != v)

    def _dir_state(self) -> dict[str, tuple[int, int, int]]:
        if self.path is None or not self.path.exists():
            return {}
        return {
            p.relative_to(self.path).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in self.path.rglob("*")
            if p.is_file()
        }

    def anonymous(self) -> Any:
        """A context without IA keys in the environment (cloning must not need them)."""
        import contextlib
        import os

        @contextlib.contextmanager
        def scope() -> Any:
            if self._monkeypatch is None:
                yield
                return
            saved = {k: os.environ.get(k) for k in ("IA_ACCESS_KEY_ID", "IA_SECRET_ACCESS_KEY")}
            for key in saved:
                self._monkeypatch.delenv(key, raising=False)
            try:
                yield
            finally:
                for key, value in saved.items():
                    if value is not None:
                        self._monkeypatch.setenv(key, value)

        return scope()


@pytest.fixture
def ia_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A running IAEmulator with egds pointed at it: EGDS_IA_ENDPOINT, test keys, and a tiny retry backoff.
    Fails the test if the emulator itself hit a bug."""
    from egregora_ds.testing.ia_emulator import IAEmulator

    with IAEmulator() as emu:
        monkeypatch.setenv("EGDS_IA_ENDPOINT", emu.endpoint)
        monkeypatch.setenv("IA_ACCESS_KEY_ID", "test-access")
        monkeypatch.setenv("IA_SECRET_ACCESS_KEY", "test-secret")
        monkeypatch.setenv("EGDS_RETRY_BACKOFF", "0.001")
        yield emu
    assert not emu.errors, emu.errors[0]


def make_backend(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emu: Any = None) -> RemoteBackend:
    """A fresh, empty remote of `kind` ("directory", "ia" or "memory"), unique to the calling test."""
    import uuid

    token = uuid.uuid4().hex[:12]
    if kind == "directory":
        path = tmp_path / f"remote-{token}"
        return RemoteBackend(kind, str(path), path=path)
    if kind == "ia":
        assert emu is not None, "an ia backend needs the ia_env fixture"
        return RemoteBackend(kind, f"ia:egds-test-{token}", emu=emu, monkeypatch=monkeypatch)
    if kind == "memory":
        return RemoteBackend(kind, f"memory:test-{token}")
    raise ValueError(kind)


@pytest.fixture(params=["directory", "ia", "memory"])
def remote_backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RemoteBackend:
    """Each backend in turn: a directory under tmp_path, an IA item on a fresh emulator, a memory remote."""
    emu = request.getfixturevalue("ia_env") if request.param == "ia" else None
    return make_backend(request.param, tmp_path, monkeypatch, emu)


# ---- helpers added for the advice tests (every `egds ...` a message suggests must run as written) -------


def advised_commands(message: str) -> list[list[str]]:
    """The `egds ...` commands a message suggests in backticks, as argument lists (without `egds`)."""
    import re
    import shlex

    return [shlex.split(command)[1:] for command in re.findall(r"`(egds [^`]*)`", message)]


# ---- hypothesis profiles ------------------------------------------------------------------------------
# `EGDS_HYPOTHESIS_PROFILE=long` runs the property tests that follow the profile (tests/test_restorability.py)
# with thousands of examples: a bug hunt, not a CI run.
from hypothesis import HealthCheck, settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile(
    "long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
if os.environ.get("EGDS_HYPOTHESIS_PROFILE"):
    _hypothesis_settings.load_profile(os.environ["EGDS_HYPOTHESIS_PROFILE"])
