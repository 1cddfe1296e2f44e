"""The data every scenario starts from, built once per run, and cheap per-repetition copies of it.

Caches (``egregora_ds.sample``): ``base`` (N rows over M months) and three mutations of it -- ``append`` (a new
month of N/M rows), ``edit`` (one chunk's text and vector changed in an old month), ``delete`` (one chunk of
another old month removed) -- plus ``all`` (the three together: version 2 of the history repository).

Repositories (each a directory holding ``.egds/`` and its cache at ``cache/``):
- ``t1``: version 1 = ``base``;
- ``hist``: v1 = ``base``, v2 = ``all`` (checkout, diff, verify, clone);
- ``pushed``: like ``hist`` but v1 was pushed to the directory remote ``remote-v1`` before v2 was recorded.

A repetition never modifies a template: it works on a *link copy* (``link_tree``). egds replaces every file
it changes (temp + rename) except the lock file and the append-only ``remotes/*.known``, so all other files
are hard-linked and a copy of a 300 MB repository costs milliseconds.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from egregora_ds import Repository
from egregora_ds.sample import append_month, delete_chunk, edit_chunk, write_sample_cache

CACHE_FILES = ("embeddings.pkl", "metadata.json", "index.json")
_COPIED = ("lock",)  # written in place by egds: copied, never linked
_COPIED_SUFFIXES = (".known",)


def link_tree(src: Path, dst: Path) -> Path:
    """Copy a directory tree, hard-linking every file egds never writes in place."""
    for dirpath, _, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            s, d = Path(dirpath) / name, dst / rel / name
            if name in _COPIED or name.endswith(_COPIED_SUFFIXES):
                shutil.copy2(s, d)
            else:
                os.link(s, d)
    return dst


def link_cache(src: Path, dst: Path) -> None:
    """Make ``dst`` hold exactly the cache files of ``src`` (hard links)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in CACHE_FILES:
        (dst / name).unlink(missing_ok=True)
        if (src / name).exists():
            os.link(src / name, dst / name)


def scan(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, inode) of every file under ``root`` (a remote directory)."""
    found = {}
    if root.is_dir():
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                st = (Path(dirpath) / name).stat()
                found[(Path(dirpath) / name).relative_to(root).as_posix()] = (st.st_size, st.st_ino)
    return found


def written_between(before: dict, after: dict) -> dict[str, int]:
    """Files created or replaced (new inode) between two scans: what an upload wrote, with sizes."""
    return {k: v[0] for k, v in after.items() if before.get(k) != v}


def dir_bytes(root: Path) -> int:
    return sum(size for size, _ in scan(root).values())


class Scratch:
    """Fresh directories per repetition; asking for a name again deletes the previous one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._last: dict[str, Path] = {}
        self._n = 0

    def fresh(self, name: str) -> Path:
        self.drop(name)
        self._n += 1
        path = self.root / f"{name}-{self._n}"
        self._last[name] = path
        return path

    def drop(self, name: str) -> None:
        old = self._last.pop(name, None)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def drop_all(self) -> None:
        for name in list(self._last):
            self.drop(name)


@dataclass
class Workspace:
    root: Path
    rows: int
    dim: int
    months: int
    new_rows: int = 0
    caches: dict[str, Path] = field(default_factory=dict)
    repos: dict[str, Path] = field(default_factory=dict)
    changed: dict[str, str] = field(default_factory=dict)  # mutation -> partition key it changes
    edited_id: int = -1
    deleted_id: int = -1
    remote_v1: Path | None = None
    remote_v1_pristine: Path | None = None
    scratch: Scratch | None = None

    @classmethod
    def build(cls, root: Path, rows: int, dim: int, months: int, seed: int = 0) -> Workspace:
        ws = cls(Path(root), rows, dim, months, new_rows=max(1, rows // months))
        ws.scratch = Scratch(ws.root / "scratch")
        caches = ws.root / "caches"
        base = caches / "base"
        info = write_sample_cache(base, rows, dim=dim, months=months, seed=seed)
        ws.caches["base"] = base
        # an old month for the edit (~10% into the history) and another for the delete (~20%)
        ws.edited_id, ws.deleted_id = rows // 10, rows // 5
        for name in ("append", "edit", "delete", "all"):
            shutil.copytree(base, caches / name)
            ws.caches[name] = caches / name
        mutation = append_month(ws.caches["append"], ws.new_rows, seed=seed + 1)
        ws.changed["append"] = mutation.month
        edit_chunk(ws.caches["edit"], ws.edited_id, text="Versão revista: a edição mudou o texto e o vetor 🚀", seed=seed)
        delete_chunk(ws.caches["delete"], ws.deleted_id)
        append_month(ws.caches["all"], ws.new_rows, seed=seed + 1)
        edit_chunk(ws.caches["all"], ws.edited_id, text="Versão revista: a edição mudou o texto e o vetor 🚀", seed=seed)
        delete_chunk(ws.caches["all"], ws.deleted_id)
        ws.changed["edit"] = ws._month_of(ws.edited_id)
        ws.changed["delete"] = ws._month_of(ws.deleted_id)
        assert info.rows == rows

        repos = ws.root / "repos"
        t1 = ws.new_repo(repos / "t1", "base")
        t1.snapshot("v1")
        ws.repos["t1"] = t1.root
        hist = Repository.open(link_tree(t1.root, repos / "hist"))
        link_cache(ws.caches["all"], hist.root / "cache")
        assert hist.snapshot("v2").version == 2
        ws.repos["hist"] = hist.root
        # v1 pushed to a directory remote, then v2 recorded: the state before an incremental push
        pushed = Repository.open(link_tree(t1.root, repos / "pushed"))
        ws.remote_v1 = ws.root / "remotes" / "remote-v1"
        ws.remote_v1.parent.mkdir(parents=True)  # egds checks the parent of a new remote directory is writable
        pushed.remote_add("origin", str(ws.remote_v1))
        pushed.push("origin")
        ws.remote_v1_pristine = link_tree(ws.remote_v1, ws.root / "remotes" / "remote-v1-pristine")
        link_cache(ws.caches["all"], pushed.root / "cache")
        assert pushed.snapshot("v2").version == 2
        ws.repos["pushed"] = pushed.root
        return ws

    def _month_of(self, chunk_id: int) -> str:
        import msgspec

        chunks = msgspec.json.decode((self.caches["base"] / "metadata.json").read_bytes())["chunks"]
        return next(c["newsletter_date"][:7] for c in chunks if c["chunk_id"] == chunk_id)

    def new_repo(self, root: Path, cache: str) -> Repository:
        """A repository at ``root`` whose cache (``root/cache``) holds ``cache``'s files."""
        root.mkdir(parents=True)
        link_cache(self.caches[cache], root / "cache")
        return Repository.init(root, cache="cache")

    def reset_remote_v1(self) -> Path:
        """Put the directory remote back to "v1 pushed" (a push replaces files, never edits them)."""
        shutil.rmtree(self.remote_v1, ignore_errors=True)
        return link_tree(self.remote_v1_pristine, self.remote_v1)

    def copy_repo(self, template: str, name: str) -> Path:
        """A fresh link copy of a template repository (its own scratch directory)."""
        return link_tree(self.repos[template], self.scratch.fresh(name))
