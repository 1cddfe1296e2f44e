"""Repository: the local store plus config, refs and history. The public API's entry point.

Every CLI command and MCP tool is one method call here; methods return typed results
(`results.py`) and raise `EgdsError` subclasses with one-line messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_write_bytes
from .errors import CorruptObject, NotARepository, RepositoryExists, RevisionError, UsageError
from .model import FORMAT_VERSION, PARTITIONINGS, Config, Manifest, decode_config, decode_manifest, encode_config
from .progress import NO_PROGRESS, Progress
from .results import LogEntry, TagResult
from .revisions import check_tag_name, history, resolve_version
from .store.local import LocalStore

if TYPE_CHECKING:
    from .results import CheckoutResult, DiffResult, GcResult, SnapshotResult, StatusResult, VerifyReport

REPO_DIR = ".egds"
MAIN_REF = "main"
DEFAULT_CACHE = "cache/rag"
DEFAULT_MODEL = "models/text-embedding-004"


class Repository:
    def __init__(self, root: Path, config: Config) -> None:
        self.root = root
        self.config = config
        self.store = LocalStore(root / REPO_DIR)
        self._manifests: dict[str, Manifest] = {}

    # ---- opening -------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | Path = ".",
        cache: str | Path = DEFAULT_CACHE,
        partitioning: str = "month",
        model: str = DEFAULT_MODEL,
    ) -> Repository:
        """Create `.egds/` in `path`. The cache path is stored relative to `path` when it is inside it."""
        root = Path(path).resolve()
        if (root / REPO_DIR).exists():
            raise RepositoryExists(
                f"{root / REPO_DIR} already exists; this directory is already an egds repository: use it as it is "
                "(egds log, egds snapshot) or run init in another directory"
            )
        if partitioning not in PARTITIONINGS:
            raise UsageError(f"unknown partitioning {partitioning!r}; use month, quarter or year")
        if not model.strip():
            raise UsageError("--model must not be empty")
        cache_path = Path(cache)
        if cache_path.is_absolute():
            try:
                cache_path = cache_path.resolve().relative_to(root)
            except ValueError:
                pass
        config = Config(format=FORMAT_VERSION, cache=cache_path.as_posix(), partitioning=partitioning, model=model)
        repo = cls(root, config)
        repo.store.create_layout()
        atomic_write_bytes(repo.store.root / "config.json", encode_config(config))
        return repo

    @classmethod
    def open(cls, path: str | Path = ".") -> Repository:
        """Open the repository at `path` or the nearest parent that has `.egds/` (like git)."""
        start = Path(path).resolve()
        for candidate in (start, *start.parents):
            config_file = candidate / REPO_DIR / "config.json"
            if config_file.is_file():
                try:
                    return cls(candidate, decode_config(config_file.read_bytes(), str(config_file)))
                except CorruptObject as exc:
                    # decode_config's advice ("run `egds verify`") cannot work: verify needs the config too.
                    raise CorruptObject(
                        f"{exc}".replace("; run `egds verify`", "")
                        + f"; restore {config_file} from a backup (it holds format, cache, partitioning and model)"
                    ) from None
            if (candidate / REPO_DIR).is_dir():
                raise NotARepository(
                    f"{candidate / REPO_DIR} has no config.json; the repository is damaged: restore config.json from a backup"
                )
        raise NotARepository(f"{start} is not inside an egds repository; run `egds init` first (or pass -C DIR)")

    @property
    def cache_path(self) -> Path:
        return (self.root / self.config.cache).resolve()

    def resolve_cache(self, cache: str | Path | None) -> Path:
        return self.cache_path if cache is None else Path(cache).resolve()

    # ---- history -------------------------------------------------------------------------------

    def head(self) -> str | None:
        return self.store.read_ref(MAIN_REF)

    def manifest(self, manifest_id: str) -> Manifest:
        cached = self._manifests.get(manifest_id)
        if cached is None:
            cached = decode_manifest(self.store.read_manifest_bytes(manifest_id), f"manifest {manifest_id[:12]}")
            self._manifests[manifest_id] = cached
        return cached

    def history(self) -> list[tuple[str, Manifest]]:
        """(id, manifest) from latest back to version 1."""
        chain: list[tuple[str, Manifest]] = []
        current = self.head()
        # Load the chain lazily: only the manifests it names are read and verified.
        loaded: dict[str, Manifest] = {}
        while current is not None and current not in loaded:
            loaded[current] = self.manifest(current)
            current = loaded[current].parent
        chain = history(self.head(), loaded)
        return chain

    def tags(self) -> dict[str, str]:
        return {name.removeprefix("tags/"): self.store.read_ref(name) for name in self.store.ref_names("tags")}  # type: ignore[misc]

    def resolve(self, rev: str = "latest") -> tuple[str, Manifest]:
        chain = self.history()
        manifest_id = resolve_version(rev, chain, self.tags(), self.store.manifest_ids())
        return manifest_id, self.manifest(manifest_id)

    def log(self, limit: int | None = None) -> list[LogEntry]:
        by_id: dict[str, list[str]] = {}
        for name, target in self.tags().items():
            by_id.setdefault(target, []).append(name)
        entries = []
        for manifest_id, m in self.history()[:limit]:
            entries.append(
                LogEntry(
                    version=m.version,
                    id=manifest_id,
                    parent=m.parent,
                    created_at=m.created_at,
                    message=m.message,
                    rows=m.rows,
                    partitions=len(m.partitions),
                    model=m.model,
                    dim=m.dim,
                    tags=sorted(by_id.get(manifest_id, [])),
                )
            )
        return entries

    def show(self, rev: str = "latest") -> tuple[str, Manifest]:
        return self.resolve(rev)

    def tag(self, name: str, rev: str = "latest", force: bool = False) -> TagResult:
        check_tag_name(name)
        manifest_id, manifest = self.resolve(rev)
        with self.store.locked():
            existing = self.store.read_ref(f"tags/{name}")
            if existing is not None and existing != manifest_id and not force:
                raise RevisionError(f"tag {name!r} already names version {self.manifest(existing).version}; pass --force to move it")
            self.store.write_ref(f"tags/{name}", manifest_id)
        return TagResult(tag=name, version=manifest.version, id=manifest_id)

    # ---- cache stamps --------------------------------------------------------------------------
    # After a snapshot or checkout we record the blake3 of each cache file and the version it
    # equals. A later command whose cache files hash the same knows the cache content without
    # parsing it (a content check, not a size/mtime guess).

    def _state_path(self) -> Path:
        return self.store.root / "state.json"

    def cache_stamp(self, cache: Path) -> tuple[str, dict[str, str | None]] | None:
        try:
            state = json.loads(self._state_path().read_bytes())
            entry = state["caches"][str(cache)]
            return entry["manifest"], entry["digests"]
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            return None

    def set_cache_stamp(self, cache: Path, manifest_id: str, digests: dict[str, str | None]) -> None:
        try:
            state = json.loads(self._state_path().read_bytes())
            if not isinstance(state.get("caches"), dict):
                raise ValueError
        except (FileNotFoundError, ValueError, AttributeError):
            state = {"caches": {}}
        state["caches"][str(cache)] = {"manifest": manifest_id, "digests": digests}
        atomic_write_bytes(self._state_path(), json.dumps(state, indent=2, sort_keys=True).encode())

    # ---- operations (each in its own module) ---------------------------------------------------

    def snapshot(
        self,
        message: str = "",
        *,
        allow_nonfinite: bool = False,
        new_model: bool = False,
        model: str | None = None,
        progress: Progress = NO_PROGRESS,
    ) -> SnapshotResult:
        from .snapshot import snapshot

        return snapshot(self, message, allow_nonfinite=allow_nonfinite, new_model=new_model, model=model, progress=progress)

    def checkout(
        self, rev: str = "latest", cache: str | Path | None = None, *, force: bool = False, progress: Progress = NO_PROGRESS
    ) -> CheckoutResult:
        from .checkout import checkout

        return checkout(self, rev, self.resolve_cache(cache), force=force, progress=progress)

    def status(self, cache: str | Path | None = None) -> StatusResult:
        from .diff import status

        return status(self, self.resolve_cache(cache))

    def diff(self, a: str, b: str = "latest", *, ids: bool = False) -> DiffResult:
        from .diff import diff

        return diff(self, a, b, with_ids=ids)

    def verify(self, *, deep: bool = False, progress: Progress = NO_PROGRESS) -> VerifyReport:
        from .maintenance import verify

        return verify(self, deep=deep, progress=progress)

    def gc(self, *, dry_run: bool = False) -> GcResult:
        from .maintenance import gc

        return gc(self, dry_run=dry_run)
