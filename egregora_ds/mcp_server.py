"""`egds mcp`: the public API as Model Context Protocol tools and resources, served over stdio.

No logic of its own: every tool is one `Repository` call whose result is encoded exactly as the CLI's
`--json` does (msgspec), published with the JSON Schema of that result type. Tool inputs are msgspec
Structs too: their schema is the tool's `inputSchema` and `msgspec.convert` validates the arguments.

The repository is opened on every call, so one created after the server started is found. Relative
paths (cache, clone directory, remote URL) are relative to the served directory, like `egds -C DIR`.

Errors: an `EgdsError` becomes a tool error (`isError`) whose text is `str(error)`, the same one line
the CLI prints after `egds: error:`; anything else becomes `internal error: Type: message`. Neither
ever ends the server.

Progress: the API calls `Progress.begin/advance/end` from the worker thread that runs it, and from its
own transfer pools. `_McpProgress` only updates counters under a lock (it never waits for the event
loop); a task on the loop sends the latest counters as `notifications/progress` every
`PROGRESS_INTERVAL` seconds and once more when the call ends, before its result. (The SDK's client
runs progress callbacks as tasks, so one may still run just after `call_tool` has returned.)
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote

import anyio
import anyio.to_thread
import msgspec
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from . import __version__
from .errors import EgdsError, UsageError, describe_os_error
from .model import Manifest
from .progress import NO_PROGRESS, Progress
from .remotes import RemoteConfig
from .repo import Repository
from .results import (
    CheckoutResult,
    ConfigSetting,
    DiffResult,
    GcResult,
    LogEntry,
    SnapshotResult,
    StatusResult,
    VerifyReport,
)
from .clone import CloneResult, PullResult
from .push import PushResult, remote_card

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.05
"""Seconds between two progress notifications of one call (at most ~20 a second, however fast it advances)."""

CARD_URI = "egds://card"
MANIFEST_TEMPLATE = "egds://manifest/{rev}"
_MANIFEST_PREFIX = "egds://manifest/"

INSTRUCTIONS = """\
egds versions the newsletter pipeline's embeddings cache (embeddings.pkl + metadata.json + index.json) as
content-addressed Parquet partitions and a chain of versions (v1, v2, ...). Typical uses:
- inspect: `status` (does the cache hold unsaved changes?), `log`, `show`, `diff`, `verify`;
- back up: `snapshot` (record the cache as a new version), then `push` to a remote;
- restore: `checkout` a version into the cache, `pull` a remote's newer versions, `clone` a remote elsewhere.
Revisions: latest, vN, N, a tag, an id prefix, REV~K (K versions before REV) or @YYYY-MM-DD[THH:MM].
Relative paths are relative to the project directory the server was started for.
Resources: egds://manifest/{rev} (a version's manifest, JSON) and egds://card (the dataset card, markdown)."""


# ---- tool inputs -------------------------------------------------------------------------------------


def _described(kind: Any, description: str) -> Any:
    return Annotated[kind, msgspec.Meta(description=description)]


Rev = _described(str, "A version: latest, vN, N, a tag, an id prefix, REV~K or @YYYY-MM-DD[THH:MM].")
Remote = _described(str, "Remote name, as added with `egds remote add` (see the remote_list tool).")
CachePath = _described(
    str | None, "Cache directory, relative to the project directory; omit for the repository's own cache."
)


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NoArgs(_Args):
    pass


class StatusArgs(_Args):
    cache: CachePath = None


class LogArgs(_Args):
    limit: _described(Annotated[int, msgspec.Meta(ge=0)] | None, "Only the newest LIMIT versions (0: none).") = None


class ShowArgs(_Args):
    rev: Rev = "latest"


class DiffArgs(_Args):
    a: Rev
    b: Rev = "latest"
    ids: _described(bool, "Also list the chunk ids that were added, removed or changed.") = False


class SnapshotArgs(_Args):
    message: _described(str, "What changed, recorded in the version.") = ""
    allow_nonfinite: _described(bool, "Store NaN/Inf vectors as they are instead of refusing them.") = False
    new_model: _described(bool, "Accept a dimension or model different from the previous version's.") = False
    model: _described(
        str | None, "Model name for this version (only with new_model); it becomes the repository's default."
    ) = None
    revert: _described(
        bool, "Record the cache even though it holds (or was checked out as) an older version, undoing the later "
        "versions' changes. Without it such a snapshot is refused (see status: would_undo, snapshot_refusal)."
    ) = False
    allow_empty: _described(bool, "Record a cache that holds no chunks when the latest version has some (refused otherwise).") = False


class ConfigArgs(_Args):
    key: _described(str | None, "One setting (cache, model, partitioning, format); omit for all of them.") = None


class ConfigSetArgs(_Args):
    key: _described(str, "cache (a path, relative to the project directory) or model (the name new versions record).")
    value: _described(str, "The new value.")


class CheckoutArgs(_Args):
    rev: Rev = "latest"
    cache: CachePath = None
    force: _described(
        bool, "DESTRUCTIVE: overwrite a cache that holds changes no version records; they are lost."
    ) = False


class PushArgs(_Args):
    remote: Remote = "origin"
    dry_run: _described(bool, "Only return the plan (what would be uploaded); change nothing.") = False


class PullArgs(_Args):
    remote: Remote = "origin"


class CloneArgs(_Args):
    url: _described(str, "ia:IDENTIFIER, a directory path (relative to the project directory) or file:///path.")
    directory: _described(
        str | None, "Where to create the new repository, relative to the project directory; must not exist or be empty."
    ) = None
    rev: Rev = "latest"
    partitions: _described(list[str] | None, "Only these partition keys (e.g. 2024-03); omit for all.") = None


class VerifyArgs(_Args):
    deep: _described(bool, "Also decode every Parquet object (slower); with remote, download and re-hash every object.") = False
    remote: _described(str | None, "Check this remote (its ref, manifests and objects) instead of the local repository.") = None


class GcArgs(_Args):
    dry_run: _described(bool, "Only list what would be deleted; delete nothing.") = False


class ShowOutput(msgspec.Struct):
    """`egds show --json`."""

    id: str
    manifest: Manifest


class LogOutput(msgspec.Struct):
    """`egds log --json` is a list; MCP structured content must be an object, so it is under `result`."""

    result: list[LogEntry]


# ---- tools -------------------------------------------------------------------------------------------


@dataclass
class _Call:
    """What a tool body gets: the project directory and the call's progress sink."""

    directory: Path
    progress: Progress = NO_PROGRESS

    def repo(self) -> Repository:
        return Repository.open(self.directory)

    def path(self, relative: str | None) -> Path | None:
        return None if relative is None else self.directory / relative


@dataclass(frozen=True)
class _Tool:
    name: str
    title: str
    description: str
    args: type[_Args]
    output: Any  # the result type, for its JSON Schema
    annotations: types.ToolAnnotations
    run: Callable[[_Call, Any], Any]
    reports_progress: bool
    wrap: bool = False

    def listing(self) -> types.Tool:
        return types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=_object_schema(self.args),
            output_schema=_object_schema(self.output),
            annotations=self.annotations,
        )


TOOLS: dict[str, _Tool] = {}


def _tool(
    name: str,
    title: str,
    args: type[_Args],
    output: Any,
    *,
    read_only: bool = False,
    destructive: bool = False,
    idempotent: bool = True,
    open_world: bool = False,
    progress: bool = False,
    wrap: bool = False,
) -> Callable[[Callable[[_Call, Any], Any]], Callable[[_Call, Any], Any]]:
    """Register a tool; its docstring is the description an assistant reads."""

    def register(run: Callable[[_Call, Any], Any]) -> Callable[[_Call, Any], Any]:
        annotations = types.ToolAnnotations(
            title=title,
            read_only_hint=read_only,
            destructive_hint=destructive,
            idempotent_hint=idempotent,
            open_world_hint=open_world,
        )
        TOOLS[name] = _Tool(name, title, inspect.cleandoc(run.__doc__ or ""), args, output, annotations, run,
                            progress, wrap)
        return run

    return register


@_tool("status", "Cache status", StatusArgs, StatusResult, read_only=True)
def _status(call: _Call, a: StatusArgs) -> StatusResult:
    """Compare the pipeline's cache with the latest version, partition by partition. Use it before
    `snapshot` (is there anything to record? `snapshot_refusal` says why a snapshot would be refused) and
    before `checkout` or `pull` (would they overwrite unsaved work? `clean: false` means the cache differs
    from the latest version; `holds` names the recorded version it equals, if any). When the cache holds or
    was checked out as an older version (`relation: older`), `would_undo` lists what a snapshot would put
    back. Changes nothing."""
    return call.repo().status(call.path(a.cache))


@_tool("log", "List versions", LogArgs, LogOutput, read_only=True, wrap=True)
def _log(call: _Call, a: LogArgs) -> list[LogEntry]:
    """List recorded versions, newest first: version number, id, date, message, rows, partitions, tags.
    Use it to find the version to show, diff or check out. Changes nothing."""
    return call.repo().log(a.limit)


@_tool("show", "Show a version", ShowArgs, ShowOutput, read_only=True)
def _show(call: _Call, a: ShowArgs) -> ShowOutput:
    """One version's manifest: parent, date, message, model, dimension, and each partition (key, object
    id, rows, bytes, chunk id range). Changes nothing. Also readable as the resource egds://manifest/{rev}."""
    manifest_id, manifest = call.repo().show(a.rev)
    return ShowOutput(manifest_id, manifest)


@_tool("diff", "Compare two versions", DiffArgs, DiffResult, read_only=True)
def _diff(call: _Call, a: DiffArgs) -> DiffResult:
    """What changed from version `a` to version `b`: partitions added, removed or changed, and chunks
    added, removed or changed, with every changed field counted (`chunks.fields`: text, embedding,
    newsletter_date, newsletter_path, section_title, char_count, chunk_index_in_newsletter, any other field)
    and `moved` for chunks whose date moved them to another partition (with ids=true, their chunk ids).
    Changes nothing."""
    return call.repo().diff(a.a, a.b, ids=a.ids)


@_tool("snapshot", "Record a new version", SnapshotArgs, SnapshotResult, progress=True)
def _snapshot(call: _Call, a: SnapshotArgs) -> SnapshotResult:
    """Record the pipeline's cache as a new version (only changed partitions are written). Adds to the
    history and never deletes or modifies anything; when the cache equals the latest version no version
    is created (`created: false`). Refuses NaN/Inf vectors, a changed model or dimension, a cache that
    holds or was checked out as an older version (it would undo later versions) and an empty cache, unless
    allow_nonfinite / new_model / revert / allow_empty say so. A new model becomes the repository's default.
    Reports progress."""
    return call.repo().snapshot(a.message, allow_nonfinite=a.allow_nonfinite, new_model=a.new_model,
                                model=a.model, revert=a.revert, allow_empty=a.allow_empty, progress=call.progress)


@_tool("checkout", "Restore a version into the cache", CheckoutArgs, CheckoutResult, destructive=True,
       open_world=True, progress=True)
def _checkout(call: _Call, a: CheckoutArgs) -> CheckoutResult:
    """DESTRUCTIVE: rewrite a cache directory (the pipeline's own unless `cache` is given) with version
    `rev`, bit for bit. Without force it refuses to overwrite a cache holding changes no version
    records; with force=true those changes are LOST (check `status` first, or `snapshot` them). Fetches
    objects missing locally from the remotes. Reports progress."""
    return call.repo().checkout(a.rev, call.path(a.cache), force=a.force, progress=call.progress)


@_tool("push", "Upload to a remote", PushArgs, PushResult, open_world=True, progress=True)
def _push(call: _Call, a: PushArgs) -> PushResult:
    """Upload the versions the remote lacks (objects, then manifests, then the dataset card, then the
    ref), to back up or publish the dataset. Only adds to the remote, and refuses if the remote has
    versions this repository lacks (pull first). dry_run=true returns the plan and changes nothing.
    Reports progress."""
    return call.repo().push(a.remote, dry_run=a.dry_run, progress=call.progress)


@_tool("pull", "Fetch from a remote", PullArgs, PullResult, destructive=True, open_world=True, progress=True)
def _pull(call: _Call, a: PullArgs) -> PullResult:
    """DESTRUCTIVE: fetch the remote's newer versions, move this repository to its latest, and rewrite
    the pipeline's cache with it. Refuses when the cache holds unsaved changes (snapshot first) or when
    both sides recorded new versions. Reports progress."""
    return call.repo().pull(a.remote, progress=call.progress)


@_tool("clone", "Copy a remote into a new repository", CloneArgs, CloneResult, idempotent=False,
       open_world=True, progress=True)
def _clone(call: _Call, a: CloneArgs) -> CloneResult:
    """Create a new repository in `directory` (default: named after the URL) from a remote, no
    credentials needed, and rebuild its cache (only some partitions with `partitions`). Every byte is
    verified. Touches nothing outside the new directory, which must not exist or be empty (or hold an
    interrupted clone of the same URL, which it finishes). Reports progress."""
    return Repository.clone(a.url, a.directory, rev=a.rev, partitions=a.partitions, progress=call.progress,
                            base=call.directory)


@_tool("verify", "Check integrity", VerifyArgs, VerifyReport, read_only=True, open_world=True, progress=True)
def _verify(call: _Call, a: VerifyArgs) -> VerifyReport:
    """Re-hash every stored object and manifest and check the refs and the version chain; `ok: false`
    lists the problems. Use it after a crash, a copy, or an error that mentions corruption. With
    `remote`, check what that remote serves instead: its ref, every manifest (downloaded and
    re-hashed) and every object its versions name (listed with the right size and md5; missing,
    unlisted or damaged ones are problems). Changes nothing. Reports progress."""
    return call.repo().verify(deep=a.deep, remote=a.remote, progress=call.progress)


@_tool("gc", "Delete unreachable data", GcArgs, GcResult, destructive=True)
def _gc(call: _Call, a: GcArgs) -> GcResult:
    """DESTRUCTIVE: delete stored objects and manifests that no version or tag reaches, and leftover
    temporary files, to free disk space. Recorded versions are kept. dry_run=true only lists them."""
    return call.repo().gc(dry_run=a.dry_run)


@_tool("config", "Show settings", ConfigArgs, dict[str, str | int], read_only=True)
def _config(call: _Call, a: ConfigArgs) -> dict[str, str | int]:
    """The repository's settings (`egds config`): cache (the pipeline's cache directory), model (the name
    new versions record), partitioning and format (fixed at init); with `key`, only that one. Changes
    nothing."""
    repo = call.repo()
    if a.key is None:
        return repo.config_items()
    setting = repo.config_get(a.key)
    return {setting.key: setting.value}


@_tool("config_set", "Change a setting", ConfigSetArgs, ConfigSetting)
def _config_set(call: _Call, a: ConfigSetArgs) -> ConfigSetting:
    """Change the cache directory or the default model name (`egds config KEY VALUE`); returns the new and
    the previous value. partitioning and format are fixed at init and refused."""
    value = str(call.directory / a.value) if a.key == "cache" else a.value
    return call.repo().config_set(a.key, value)


@_tool("remote_list", "List remotes", NoArgs, dict[str, RemoteConfig], read_only=True)
def _remote_list(call: _Call, a: NoArgs) -> dict[str, RemoteConfig]:
    """The configured remotes (name -> URL and card details): the names push and pull take. Changes
    nothing."""
    return call.repo().remote_list()


def _object_schema(kind: Any) -> dict[str, Any]:
    """msgspec's JSON Schema of `kind` with the root `$ref` inlined: MCP wants `type: object` at the root."""
    schema = msgspec.json.schema(kind)
    ref = schema.pop("$ref", None)
    if ref is not None:
        defs = schema.pop("$defs")
        schema = {**defs.pop(ref.rsplit("/", 1)[-1]), **schema}
        if defs:
            schema["$defs"] = defs
    return schema


# ---- progress ------------------------------------------------------------------------------------------


class _McpProgress:
    """The API's `Progress`, called from any thread; the event loop reads it with `pending()`.

    An operation may run several phases (clone: fetch bytes, then write rows); MCP wants the reported
    progress to grow with every notification, so each phase starts where the previous one ended, and
    the message carries the phase's own numbers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base = 0  # progress of the phases already begun and left behind
        self._done = 0
        self._total: int | None = None
        self._label = ""
        self._unit = ""
        self._sent: int | None = None

    def begin(self, description: str, total: int | None, unit: str = "items") -> None:
        with self._lock:
            self._base += self._done
            self._done, self._total, self._label, self._unit = 0, total, description, unit

    def advance(self, amount: int = 1) -> None:
        with self._lock:
            self._done += amount

    def end(self) -> None:
        pass  # the next begin() starts after this phase

    def pending(self) -> tuple[float, float | None, str] | None:
        """(progress, total, message) when there is something new to report."""
        with self._lock:
            progress = self._base + self._done
            if not self._label or (self._sent is not None and progress <= self._sent):
                return None
            self._sent = progress
            of = "" if self._total is None else f"/{self._total}"
            total = None if self._total is None else self._base + max(self._total, self._done)
            return progress, total, f"{self._label}: {self._done}{of} {self._unit}"

    async def flush(self, ctx: ServerRequestContext[Any, Any]) -> None:
        update = self.pending()
        if update is not None:
            try:
                await ctx.session.report_progress(*update)
            except Exception:  # a client that went away must not fail the operation
                logger.debug("could not send a progress notification", exc_info=True)


def _wants_progress(ctx: ServerRequestContext[Any, Any]) -> bool:
    return bool(ctx.meta) and ctx.meta.get("progress_token") is not None  # type: ignore[union-attr]


async def _in_thread(ctx: ServerRequestContext[Any, Any], run: Callable[[Progress], Any], progress: bool) -> Any:
    """Run a blocking API call in a worker thread, relaying its progress when the client asked for it."""
    if not (progress and _wants_progress(ctx)):
        return await anyio.to_thread.run_sync(run, NO_PROGRESS)
    sink = _McpProgress()
    finished = anyio.Event()
    error: Exception | None = None
    result: Any = None

    async def relay() -> None:
        # Sends the latest numbers every interval, and the final ones once the call has finished (so
        # they go before the result). Stopped by `finished`, never cancelled: a cancelled send would
        # lose numbers that pending() already counted as sent.
        while not finished.is_set():
            with anyio.move_on_after(PROGRESS_INTERVAL):
                await finished.wait()
            await sink.flush(ctx)

    async with anyio.create_task_group() as tg:
        tg.start_soon(relay)
        try:
            result = await anyio.to_thread.run_sync(run, sink)
        except Exception as exc:  # raised below, outside the task group (which would wrap it in a group)
            error = exc
        finally:
            finished.set()
    if error is not None:
        raise error
    return result


# ---- server ------------------------------------------------------------------------------------------


def _text(value: Any) -> list[types.TextContent]:
    return [types.TextContent(type="text", text=msgspec.json.encode(value).decode())]


def _tool_error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def _one_line(exc: Exception) -> str:
    """What the client sees for an exception: `str(EgdsError)` as is, anything else as an internal error."""
    if isinstance(exc, EgdsError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if os.environ.get("EGDS_DEBUG"):
        logger.error("internal error", exc_info=exc)
    return "internal error: " + " ".join(f"{type(exc).__name__}: {exc}".split())


class EgdsMcpServer:
    """The MCP server of one project directory (the repository is opened on every call)."""

    def __init__(self, directory: str | Path = ".") -> None:
        self.directory = Path(directory).resolve()
        self.server: Server[Any] = Server(
            "egds",
            version=__version__,
            title="egds: versioned newsletter embeddings",
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
        )
        self._tools = types.ListToolsResult(tools=[tool.listing() for tool in TOOLS.values()])

    async def run_stdio(self) -> None:
        async with stdio_server() as (read_stream, write_stream):
            await self.server.run(read_stream, write_stream, self.server.create_initialization_options())

    # ---- tools

    async def _list_tools(self, ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        return self._tools

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = TOOLS.get(params.name)
        if tool is None:
            return _tool_error(f"unknown tool {params.name!r}; the tools are {', '.join(TOOLS)}")
        try:
            args = msgspec.convert(params.arguments or {}, tool.args)
        except msgspec.ValidationError as exc:
            return _tool_error(f"invalid arguments for {tool.name}: {exc}")
        try:
            result = await _in_thread(ctx, lambda progress: tool.run(_Call(self.directory, progress), args),
                                      tool.reports_progress)
        except Exception as exc:
            return _tool_error(_one_line(exc))
        structured = msgspec.to_builtins(result)
        if tool.wrap:
            structured = {"result": structured}
        return types.CallToolResult(content=_text(structured), structured_content=structured)

    # ---- resources

    async def _list_resources(self, ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        card = types.Resource(
            uri=CARD_URI, name="card", title="Dataset card", mime_type="text/markdown",
            description="README.md that `push` publishes: model, rows, every version, files and how to load them.",
        )
        return types.ListResourcesResult(resources=[card])

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: Any
    ) -> types.ListResourceTemplatesResult:
        manifest = types.ResourceTemplate(
            uri_template=MANIFEST_TEMPLATE, name="manifest", title="Manifest of a version",
            mime_type="application/json",
            description="`egds show --json` of a version: rev is latest, vN, N, a tag, an id prefix, REV~K or "
                        "@YYYY-MM-DD (percent-encoded where needed).",
        )
        return types.ListResourceTemplatesResult(resource_templates=[manifest])

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri == CARD_URI:
            read, mime = self._card, "text/markdown"
        elif uri.startswith(_MANIFEST_PREFIX) and len(uri) > len(_MANIFEST_PREFIX):
            rev = unquote(uri[len(_MANIFEST_PREFIX):])
            read, mime = (lambda: self._manifest(rev)), "application/json"
        else:
            raise MCPError(types.INVALID_PARAMS, f"unknown resource {uri}; use {CARD_URI} or {MANIFEST_TEMPLATE}",
                           {"uri": uri})
        try:
            text = await anyio.to_thread.run_sync(read)
        except Exception as exc:
            code = types.INVALID_PARAMS if isinstance(exc, EgdsError) else types.INTERNAL_ERROR
            raise MCPError(code, _one_line(exc), {"uri": uri}) from None
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, text=text, mime_type=mime)])

    def _manifest(self, rev: str) -> str:
        manifest_id, manifest = Repository.open(self.directory).show(rev)
        return msgspec.json.format(msgspec.json.encode(ShowOutput(manifest_id, manifest)), indent=2).decode()

    def _card(self) -> str:
        """The card `push` would upload, for the remote `origin`, else the first one."""
        repo = Repository.open(self.directory)
        chain = repo.history()
        if not chain:
            raise UsageError("no versions yet, so no dataset card; run the snapshot tool first")
        remotes = repo.remote_list()
        name = "origin" if "origin" in remotes else min(remotes, default=None)
        if name is not None:
            config = remotes[name]
        else:  # not pushed anywhere yet: the card with a placeholder URL
            config = RemoteConfig(url="<remote-url>", title=f"egds dataset ({repo.root.name})")
        return remote_card(config, chain).decode()


def serve(directory: str | Path = ".") -> None:
    """Serve the repository at `directory` over stdin/stdout until the client closes the connection."""
    anyio.run(EgdsMcpServer(directory).run_stdio)

