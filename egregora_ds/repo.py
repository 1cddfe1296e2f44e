"""Repository: the local store plus config, refs and history. The public API's entry point.

Every CLI command and MCP tool is one method call here; methods return typed results
(`results.py`) and raise `EgdsError` subclasses with one-line messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from .atomic import atomic_write_bytes
from .errors import CorruptObject, NotARepository, RepositoryExists, RevisionError, UsageError
from .model import FORMAT_VERSION, PARTITIONINGS, Config, Manifest, decode_config, decode_manifest, encode_config
from .progress import NO_PROGRESS, Progress
from .results import ConfigSetting, LogEntry, TagResult
from .revisions import check_tag_name, history, resolve_version
from .remotes import RemoteConfig, RemoteRegistry, normalise_url
from .store.local import LocalStore

if TYPE_CHECKING:
    from .clone import CloneResult, PullResult
    from .push import PushResult
    from .results import CheckoutResult, DiffResult, GcResult, SnapshotResult, StatusResult, VerifyReport

REPO_DIR = ".egds"
MAIN_REF = "main"
DEFAULT_CACHE = "cache/rag"
DEFAULT_MODEL = "models/text-embedding-004"


#: What `egds config` lists. `cache` and `model` may be changed; the others are fixed at init.
CONFIG_KEYS = ("cache", "model", "partitioning", "format")
_FIXED_SETTINGS = {
    "partitioning": "partitioning is fixed at init: every version's partitions are keyed by it, so a new one would "
    "make every partition of the next version look changed; to use another, run `egds init --partition KIND` "
    "in a new directory and snapshot the cache there",
    "format": "format is the repository's format version, which egds itself writes; it cannot be set",
}


def _stored_cache_path(root: Path, cache: str | Path) -> str:
    """The cache path as config.json stores it: relative to the repository root when it is inside it."""
    cache_path = Path(cache)
    if cache_path.is_absolute():
        try:
            cache_path = cache_path.resolve().relative_to(root)
        except ValueError:
            pass
    return cache_path.as_posix()


_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,99}")


class _TagRefs(Mapping[str, str]):
    """Tags read one at a time, on demand: a damaged tag only matters to a revision that names it."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store

    def __contains__(self, name: object) -> bool:
        # Only well-formed names reach the file system: a revision like `../../x` is never a path.
        return isinstance(name, str) and _TAG_NAME.fullmatch(name) is not None and self._store.ref_path(f"tags/{name}").is_file()

    def __getitem__(self, name: str) -> str:
        target = self._store.read_ref(f"tags/{name}") if name in self else None
        if target is None:
            raise KeyError(name)
        return target

    def __iter__(self) -> Iterator[str]:
        return (name.removeprefix("tags/") for name in self._store.ref_names("tags"))

    def __len__(self) -> int:
        return len(self._store.ref_names("tags"))


class Repository:
    def __init__(self, root: Path, config: Config) -> None:
        self.root = root
        self.config = config
        self.store = LocalStore(root / REPO_DIR)
        self.remotes = RemoteRegistry(self.store.root)
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
        check_text(model, "--model", single_line=True)
        config = Config(format=FORMAT_VERSION, cache=_stored_cache_path(root, cache), partitioning=partitioning, model=model)
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
            if (candidate / REPO_DIR / "clone-in-progress").exists():  # clone.CLONE_MARKER
                from .clone import pending_clone, unfinished_clone_message

                pending = pending_clone(candidate)
                if pending is not None:  # an interrupted clone: finishing it is the only next step
                    raise UsageError(unfinished_clone_message(candidate, pending))
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

    # ---- settings ------------------------------------------------------------------------------

    def config_items(self) -> dict[str, str | int]:
        """Every setting of config.json, in CONFIG_KEYS order."""
        return {key: getattr(self.config, key) for key in CONFIG_KEYS}

    def config_get(self, key: str) -> ConfigSetting:
        _check_config_key(key)
        return ConfigSetting(key, getattr(self.config, key))

    def config_set(self, key: str, value: str) -> ConfigSetting:
        """Change `cache` (relative to the repository root unless absolute) or `model` (the name recorded
        in new versions); config.json is replaced atomically, under the write lock."""
        _check_config_key(key)
        if key in _FIXED_SETTINGS:
            raise UsageError(_FIXED_SETTINGS[key])
        if not value.strip():
            raise UsageError(f"{key} must not be empty")
        check_text(value, key, single_line=True)
        stored = _stored_cache_path(self.root, value) if key == "cache" else value
        with self.store.locked():
            previous = self.update_config(**{key: stored})
        return ConfigSetting(key, stored, previous[key])

    def update_config(self, **changes: str) -> dict[str, str | int]:
        """Replace config.json with `changes` applied (atomically) and return the previous settings.
        The caller holds the write lock; the file is re-read under it, so a concurrent change is kept."""
        path = self.store.root / "config.json"
        current = decode_config(path.read_bytes(), str(path))
        atomic_write_bytes(path, encode_config(msgspec.structs.replace(current, **changes)))
        self.config = decode_config(path.read_bytes(), str(path))
        return {key: getattr(current, key) for key in CONFIG_KEYS}

    # ---- history -------------------------------------------------------------------------------

    def head(self) -> str | None:
        return self.store.read_ref(MAIN_REF)

    def has_manifest(self, manifest_id: str) -> bool:
        return self.store.manifest_path(manifest_id).is_file()

    def manifest(self, manifest_id: str) -> Manifest:
        cached = self._manifests.get(manifest_id)
        if cached is None:
            cached = decode_manifest(self.store.read_manifest_bytes(manifest_id), f"manifest {manifest_id[:12]}")
            self._manifests[manifest_id] = cached
        return cached

    def remember_manifests(self, manifests: Iterable[tuple[str, Manifest]]) -> None:
        """Manifests the caller has just verified and decoded (a fetch), so reads need not repeat it."""
        self._manifests.update(manifests)

    def history(self) -> list[tuple[str, Manifest]]:
        """(id, manifest) from latest back to version 1."""
        chain: list[tuple[str, Manifest]] = []
        head = current = self.head()  # read once: a snapshot may move it meanwhile
        # Load the chain lazily: only the manifests it names are read and verified.
        loaded: dict[str, Manifest] = {}
        while current is not None and current not in loaded:
            loaded[current] = self.manifest(current)
            current = loaded[current].parent
        chain = history(head, loaded)
        return chain

    def tags(self) -> dict[str, str]:
        return {name.removeprefix("tags/"): self.store.read_ref(name) for name in self.store.ref_names("tags")}  # type: ignore[misc]

    def resolve(self, rev: str = "latest") -> tuple[str, Manifest]:
        chain = self.history()
        manifest_id = resolve_version(rev, chain, _TagRefs(self.store), self.store.manifest_ids())
        return manifest_id, self.manifest(manifest_id)

    def log(self, limit: int | None = None) -> list[LogEntry]:
        """The newest `limit` versions (all when None; none for 0, like `git log -n 0`)."""
        if limit is not None and limit < 0:
            raise UsageError(f"-n/--limit must be 0 or more, not {limit}")
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
    # parsing it (a content check, not a size/mtime guess). The stamp also says which version the
    # cache was last written as after its files changed: the revert rule (lineage.py) uses that, so
    # losing a stamp only makes snapshot refuse less, never record something else.

    def _state_path(self) -> Path:
        return self.store.root / "state.json"

    def _cache_entry(self, cache: Path) -> dict | None:
        try:
            entry = json.loads(self._state_path().read_bytes())["caches"][str(cache)]
            return entry if isinstance(entry, dict) else None
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            return None

    def cache_stamp(self, cache: Path) -> tuple[str, dict[str, str | None]] | None:
        """(version id, file digests) when the cache was last written as that whole version."""
        entry = self._cache_entry(cache)
        if entry is None or entry.get("partitions") is not None:
            return None
        try:
            return entry["manifest"], entry["digests"]
        except KeyError:
            return None

    def partial_stamp(self, cache: Path) -> tuple[str, list[str], dict[str, str | None]] | None:
        """(version id, partitions, digests) when the cache was last checked out with only some partitions."""
        entry = self._cache_entry(cache)
        if entry is None or entry.get("partitions") is None:
            return None
        try:
            return entry["manifest"], list(entry["partitions"]), entry["digests"]
        except (KeyError, TypeError):
            return None

    def cache_written_as(self, cache: Path) -> tuple[str, dict[str, str | None]] | None:
        """(version id, file digests) the cache was last written as, whole or partial (see lineage.py)."""
        entry = self._cache_entry(cache)
        if entry is None or not isinstance(entry.get("manifest"), str) or not isinstance(entry.get("digests"), dict):
            return None
        return entry["manifest"], entry["digests"]

    def partial_partitions(self, cache: Path) -> set[str] | None:
        stamp = self.partial_stamp(cache)
        return None if stamp is None else set(stamp[1])

    def set_cache_stamp(
        self, cache: Path, manifest_id: str, digests: dict[str, str | None], partitions: list[str] | None = None
    ) -> None:
        try:
            state = json.loads(self._state_path().read_bytes())
            if not isinstance(state.get("caches"), dict):
                raise ValueError
        except (FileNotFoundError, ValueError, AttributeError):
            state = {"caches": {}}
        state["caches"][str(cache)] = {"manifest": manifest_id, "digests": digests, "partitions": partitions}
        atomic_write_bytes(self._state_path(), json.dumps(state, indent=2, sort_keys=True).encode())

    # ---- operations (each in its own module) ---------------------------------------------------

    def snapshot(
        self,
        message: str = "",
        *,
        allow_nonfinite: bool = False,
        new_model: bool = False,
        model: str | None = None,
        revert: bool = False,
        allow_empty: bool = False,
        progress: Progress = NO_PROGRESS,
    ) -> SnapshotResult:
        """Record the cache as a new version. `revert` allows recording content that undoes later versions
        (the cache holds or was checked out as an older version); `allow_empty` a cache with no chunks."""
        from .snapshot import snapshot

        return snapshot(self, message, allow_nonfinite=allow_nonfinite, new_model=new_model, model=model,
                        revert=revert, allow_empty=allow_empty, progress=progress)

    def checkout(
        self,
        rev: str = "latest",
        cache: str | Path | None = None,
        *,
        force: bool = False,
        partitions: list[str] | None = None,
        progress: Progress = NO_PROGRESS,
    ) -> CheckoutResult:
        """Rebuild the cache of `rev`; `partitions` limits it to those keys (a partial cache)."""
        from .checkout import checkout

        return checkout(self, rev, self.resolve_cache(cache), force=force, partitions=partitions, progress=progress)

    def status(self, cache: str | Path | None = None) -> StatusResult:
        from .diff import status

        return status(self, self.resolve_cache(cache))

    def diff(self, a: str, b: str = "latest", *, ids: bool = False) -> DiffResult:
        from .diff import diff

        return diff(self, a, b, with_ids=ids)

    def verify(self, *, deep: bool = False, remote: str | None = None, progress: Progress = NO_PROGRESS) -> VerifyReport:
        """Check the local repository, or with `remote` that remote's ref, manifests and objects."""
        from .maintenance import verify, verify_remote

        if remote is not None:
            return verify_remote(self, remote, deep=deep, progress=progress)
        return verify(self, deep=deep, progress=progress)

    def gc(self, *, dry_run: bool = False) -> GcResult:
        from .maintenance import gc

        return gc(self, dry_run=dry_run)

    # ---- remotes -------------------------------------------------------------------------------

    def remote_add(
        self, name: str, url: str, *, title: str = "", description: str = "", license: str = "", base: str | Path | None = None
    ) -> RemoteConfig:
        """Add a remote; a relative directory URL is relative to `base` (default: the current directory)."""
        where = Path(base).resolve() if base is not None else Path.cwd()
        config = RemoteConfig(url=normalise_url(url, where), title=title, description=description, license=license)
        self.remotes.add(name, config)
        return config

    def remote_remove(self, name: str) -> RemoteConfig:
        config = self.remotes.remove(name)
        for ref in self.store.ref_names(f"remotes/{name}"):
            self.store.delete_ref(ref)
        return config

    def remote_list(self) -> dict[str, RemoteConfig]:
        return self.remotes.load()

    def push(
        self,
        remote: str = "origin",
        *,
        dry_run: bool = False,
        progress: Progress = NO_PROGRESS,
        wait: float | None = None,
        ingest_grace: float | None = None,
    ) -> PushResult:
        from .push import push

        return push(self, remote, dry_run=dry_run, progress=progress, wait=wait, ingest_grace=ingest_grace)

    def pull(self, remote: str = "origin", *, progress: Progress = NO_PROGRESS) -> PullResult:
        from .clone import pull

        return pull(self, remote, progress=progress)

    @staticmethod
    def clone(
        url: str,
        directory: str | Path | None = None,
        *,
        rev: str = "latest",
        partitions: list[str] | None = None,
        progress: Progress = NO_PROGRESS,
        base: str | Path | None = None,
    ) -> CloneResult:
        """Create a repository from a remote (no credentials needed) and check out `rev`.

        A relative `url` or `directory` is relative to `base` (default: the current directory)."""
        from .clone import clone

        return clone(url, Path(directory) if directory is not None else None, rev=rev, partitions=partitions,
                     progress=progress, base=Path(base).resolve() if base is not None else None)


def check_text(value: str, what: str, *, single_line: bool) -> None:
    """Text egds records (a message, a model name, a setting) must be UTF-8 text: argv turns bytes that are
    not UTF-8 into lone surrogates, which no JSON file can hold. A name is also one printable line."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{what} is not valid UTF-8 text (a byte that is not UTF-8 at position {exc.start}: {value!r}); "
            "write it in UTF-8"
        ) from None
    if single_line and any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise UsageError(f"{what} must not contain control characters (newlines, tabs, escapes): {value!r}")


def _check_config_key(key: str) -> None:
    if key not in CONFIG_KEYS:
        raise UsageError(f"unknown setting {key!r}; the settings are {', '.join(CONFIG_KEYS)} (`egds config` lists them)")
