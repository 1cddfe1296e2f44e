"""`egds`: parse arguments, make one API call, render the result. No logic of its own.

Errors: every `EgdsError` becomes one line on stderr and its exit code; anything else is a bug
and is shown as one line too, unless EGDS_DEBUG=1 asks for the traceback.

Output: every line goes through `_Lines`, which prints text exactly as given (user strings such as
messages, tags, paths, remote names and URLs, model names and partition keys are never read as markup,
emoji codes or wrapped to the terminal's width), except that control characters, lone surrogates and
bidirectional-text controls are shown escaped (`\\n`, `\\x1b`, `\\u202e`): one record stays on one line and
a hostile string cannot drive the terminal. `--json` output is exact.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import msgspec
import typer
from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import __version__
from .errors import EgdsError, describe_os_error
from .repo import CONFIG_KEYS, DEFAULT_CACHE, DEFAULT_MODEL, Repository

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Versioned, content-addressed embeddings datasets.")
T = TypeVar("T")

# Characters printed escaped: C0 and C1 controls, DEL, lone surrogates (argv decodes undecodable bytes to
# them), line/paragraph separators and the bidirectional-text controls that can make text read backwards.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: str) -> str:
    """`text` as it is, except the characters above, written as Python escapes (`\\n`, `\\x1b`, `\\u202e`)."""
    def escape(match: re.Match[str]) -> str:
        c = match.group()
        return _NAMED_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _UNPRINTABLE.sub(escape, text)


class _Lines:
    """Writes one line per call, verbatim but for `printable`'s escapes. Never markup, never wrapped."""

    def __init__(self, stream: str) -> None:
        self._stream = stream

    def print(self, text: object = "", **_ignored: Any) -> None:  # the keywords of rich's print, unused
        self._write(printable(str(text)) + "\n")

    def fields(self, *values: object, sep: str = "\t") -> None:
        """One line of fields joined by `sep` (a tab for scripts), each escaped on its own."""
        self._write(sep.join(printable(str(v)) for v in values) + "\n")

    def _write(self, line: str) -> None:
        stream = getattr(sys, self._stream)  # looked up per call: tests and MCP swap sys.stdout
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            stream.write(line)
        except UnicodeEncodeError:  # a terminal that cannot show some character: escape it too
            stream.write(line.encode(encoding, "backslashreplace").decode(encoding))


out = _Lines("stdout")
err = _Lines("stderr")
_progress_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Rev = Annotated[str, typer.Argument(help="latest, vN, N, a tag, an id prefix, REV~K or @YYYY-MM-DD[THH:MM].")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache", help="Cache directory (default: the one set at init).")]


class _State:
    directory: Path = Path(".")


state = _State()


def _print_version(value: bool) -> None:
    # Eager, so `egds --version` works without a command (a plain callback flag never ran:
    # click asked for the missing command first and exited 2).
    if value:
        out.print(f"egds {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    directory: Annotated[Path, typer.Option("-C", help="Run as if egds was started in DIR.")] = Path("."),
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    state.directory = directory


def _repo() -> Repository:
    return Repository.open(state.directory)


def _cache(cache: Optional[Path]) -> Optional[Path]:
    """A relative --cache is relative to -C DIR ("as if egds was started in DIR", like git -C),
    not to the directory the shell is in."""
    return None if cache is None else state.directory / cache


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


class _RichProgress:
    """Adapts the API's Progress protocol to a rich bar on stderr (hidden when not a terminal)."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task: Any = None

    def begin(self, description: str, total: int | None, unit: str = "items") -> None:
        amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
        self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), amount, TimeRemainingColumn(),
                             console=_progress_console, transient=True, disable=not _progress_console.is_terminal)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _run(call: Callable[[], T]) -> T:
    try:
        return call()
    except EgdsError as exc:
        err.print(f"egds: error: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("egds: interrupted; nothing was left half-written")
        raise typer.Exit(130) from None
    except OSError as exc:  # the machine failed (a full disk, a read-only path), not egds
        if os.environ.get("EGDS_DEBUG"):
            raise
        err.print(f"egds: error: {describe_os_error(exc)}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # a bug: say so in one line, keep the traceback for those who ask
        if os.environ.get("EGDS_DEBUG"):
            raise
        err.print(f"egds: internal error: {type(exc).__name__}: {exc} (set EGDS_DEBUG=1 for a traceback, and please report it)",
                  markup=False, soft_wrap=True)
        raise typer.Exit(70) from None


@app.command()
def init(
    cache: Annotated[str, typer.Option("--cache", help="The pipeline's cache directory.")] = DEFAULT_CACHE,
    partition: Annotated[str, typer.Option("--partition", help="month, quarter or year.")] = "month",
    model: Annotated[str, typer.Option("--model", help="Embedding model name recorded in every version.")] = DEFAULT_MODEL,
) -> None:
    """Create a repository (.egds/) in the current directory."""
    repo = _run(lambda: Repository.init(state.directory, cache=cache, partitioning=partition, model=model))
    out.print(f"Initialised egds repository in {repo.store.root} (cache {repo.config.cache}, {partition}ly partitions, "
              f"model {repo.config.model})")


@app.command()
def snapshot(
    message: Annotated[str, typer.Option("-m", "--message", help="What changed.")] = "",
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="Store NaN/Inf vectors as they are.")] = False,
    new_model: Annotated[bool, typer.Option("--new-model", help="Accept a dimension or model different from the parent's.")] = False,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Model name for this version (with --new-model); it becomes the repository's default.")] = None,
    revert: Annotated[bool, typer.Option(
        "--revert", help="Record the cache even though it holds (or was checked out as) an older version, undoing "
                         "later versions' changes.")] = False,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Record a cache that holds no chunks when the latest version has some.")] = False,
    json: JsonFlag = False,
) -> None:
    """Record the cache as a new version (only changed partitions are written)."""
    repo = _run(_repo)
    result = _run(lambda: repo.snapshot(message, allow_nonfinite=allow_nonfinite, new_model=new_model, model=model,
                                        revert=revert, allow_empty=allow_empty, progress=_RichProgress()))
    for warning in result.warnings:
        err.print(f"egds: warning: {warning}")
    if json:
        return _print_json(result)
    if not result.created:
        if result.version is None:
            out.print("Nothing to record.")
        else:
            out.print(f"Nothing changed since v{result.version} ({result.id[:12]}); no new version.")  # type: ignore[index]
        return
    p = result.partitions
    out.print(f"Recorded v{result.version} ({result.id[:12]}): {result.rows} rows, "  # type: ignore[index]
              f"{p.written} partitions written ({_size(result.bytes_written)}), {p.reused} reused")


@app.command()
def log(json: JsonFlag = False, limit: Annotated[Optional[int], typer.Option(
        "-n", "--limit", help="Only the newest N versions (0: none).")] = None) -> None:
    """List versions, newest first."""
    entries = _run(lambda: _repo().log(limit))
    if json:
        return _print_json(entries)
    if not entries:
        if limit != 0:  # `-n 0` asks for nothing, like git log -n 0
            out.print("No versions yet; run `egds snapshot`.")
        return
    rows = [[f"v{e.version}", e.id[:12], e.created_at.strftime("%Y-%m-%d %H:%M:%S"), str(e.rows), str(e.partitions),
             ", ".join(e.tags) or "-", e.message] for e in entries]
    _print_columns(["version", "id", "created (UTC)", "rows", "parts", "tags", "message"], rows)


@app.command()
def show(rev: Rev = "latest", json: JsonFlag = False) -> None:
    """Show one version's manifest."""
    manifest_id, m = _run(lambda: _repo().show(rev))
    if json:
        return _print_json({"id": manifest_id, "manifest": m})
    for line in (f"v{m.version}  {manifest_id}", f"parent   {m.parent or '-'}", f"created  {m.created_at.isoformat()}",
                 f"message  {m.message}", f"model    {m.model} (dim {m.dim}, {m.dtype})",
                 f"rows     {m.rows} in {len(m.partitions)} {m.partitioning} partitions"):
        out.print(line)
    _print_columns(["partition", "object", "rows", "size", "chunk ids"],
                   [[p.key, p.object[:12], str(p.rows), _size(p.bytes), f"{p.min_chunk_id}..{p.max_chunk_id}"]
                    for p in m.partitions])


@app.command()
def tag(name: str, rev: Rev = "latest", force: Annotated[bool, typer.Option("--force")] = False, json: JsonFlag = False) -> None:
    """Name a version."""
    result = _run(lambda: _repo().tag(name, rev, force=force))
    if json:
        return _print_json(result)
    out.print(f"Tagged v{result.version} ({result.id[:12]}) as {result.tag}")


@app.command()
def checkout(
    rev: Rev = "latest",
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a cache with unsaved changes.")] = False,
    json: JsonFlag = False,
) -> None:
    """Rebuild the pickle cache of a version, bit for bit."""
    repo = _run(_repo)
    result = _run(lambda: repo.checkout(rev, _cache(cache), force=force, progress=_RichProgress()))
    if json:
        return _print_json(result)
    if result.already_current:
        out.print(f"{result.cache} already holds v{result.version}.")
    else:
        out.print(f"Checked out v{result.version} ({result.id[:12]}) into {result.cache}: {result.rows} rows")
    head = _run(repo.head)
    if Path(result.cache) == repo.cache_path and head is not None and result.id != head:
        out.print(f"The cache now holds v{result.version}, not the latest version: `egds checkout latest` returns to it, "
                  "and a snapshot refuses to record it unless you pass --revert.")


@app.command()
def status(cache: CacheOpt = None, json: JsonFlag = False) -> None:
    """Compare the cache with the latest version, partition by partition."""
    result = _run(lambda: _repo().status(_cache(cache)))
    if json:
        return _print_json(result)
    where = f"v{result.version}" if result.version else "no version yet"
    if result.clean:
        out.print(f"Cache {result.cache} matches {where}; nothing to snapshot.")
        return
    if result.holds is not None and result.relation != "latest":
        out.print(f"Cache {result.cache} holds v{result.holds} ({result.holds_id[:12]}), {_relation(result)}.")  # type: ignore[index]
    elif result.based_on is not None and result.relation != "latest":
        out.print(f"Cache {result.cache} was checked out as v{result.based_on} ({result.based_on_id[:12]}), "  # type: ignore[index]
                  f"{_relation(result)}, and changed since.")
    out.print(f"Cache {result.cache} against {where}:")
    p = result.partitions
    for label, keys in (("changed", p.changed), ("added", p.added), ("removed", p.removed)):
        if keys:
            out.print(f"  {label:9} {', '.join(keys)}")
    for flag, label in ((result.index_changed, "index.json changed"), (result.extras_changed, "extra keys changed"),
                        (result.order_changed, "row order changed"), (result.model_changed, "dimension or dtype changed")):
        if flag:
            out.print(f"  {label}")
    if result.partial:
        out.print(f"  partial checkout: the cache holds only {', '.join(result.partial)}")
    if result.snapshot_refusal is not None:
        out.print(f"  unchanged {len(p.unchanged)} partitions. A snapshot would be refused: {result.snapshot_refusal}")
    elif cache is not None and Path(result.cache) != _run(_repo).cache_path:
        out.print(f"  unchanged {len(p.unchanged)} partitions. (`egds snapshot` records the repository's own cache, "
                  "not this one: `egds config cache PATH` sets which one that is.)")
    else:
        out.print(f"  unchanged {len(p.unchanged)} partitions. Run `egds snapshot` to record.")


@app.command()
def diff(a: Rev, b: Rev = "latest", ids: Annotated[bool, typer.Option("--ids", help="List chunk ids.")] = False,
         json: JsonFlag = False) -> None:
    """What changed between two versions: partitions and chunks."""
    result = _run(lambda: _repo().diff(a, b, ids=ids))
    if json:
        return _print_json(result)
    p, c = result.partitions, result.chunks
    out.print(f"{a} ({result.a[:12]}) -> {b} ({result.b[:12]})")
    out.print(f"partitions: {len(p.added)} added{_keys(p.added)}, {len(p.removed)} removed{_keys(p.removed)}, "
              f"{len(p.changed)} changed{_keys(p.changed)}")
    out.print(f"chunks: {c.added} added, {c.removed} removed, {c.changed} changed ({c.text_changed} text changed, "
              f"{c.embedding_changed} embedding changed, {c.moved} moved to another partition)")
    others = {name: n for name, n in c.fields.items() if name not in ("text", "embedding")}
    if others:
        out.print("fields changed: " + ", ".join(f"{name} {n}" for name, n in others.items()))
    flags = [label for flag, label in ((result.model_changed, "model, dimension or dtype"),
                                       (result.index_changed, "index.json"), (result.extras_changed, "extra keys"),
                                       (result.order_changed, "row order")) if flag]
    if flags:
        out.print(f"also changed: {', '.join(flags)}")
    if result.ids is not None:
        ids = result.ids
        for label, values in (("added", ids.added), ("removed", ids.removed), ("changed", ids.changed),
                              ("moved", ids.moved), *((f"{name} changed", v) for name, v in ids.fields.items())):
            out.print(f"  {label}: {' '.join(map(str, values)) or '-'}")


def _keys(keys: list[str]) -> str:
    return f" ({', '.join(keys)})" if keys else ""


@app.command()
def verify(deep: Annotated[bool, typer.Option("--deep", help="Also decode every Parquet object (with --remote: download and re-hash every object).")] = False,
           remote: Annotated[Optional[str], typer.Option("--remote", help="Check this remote's ref, manifests and objects instead.")] = None,
           json: JsonFlag = False) -> None:
    """Re-hash every object and manifest; check refs and the version chain."""
    repo = _run(_repo)
    report = _run(lambda: repo.verify(deep=deep, remote=remote, progress=_RichProgress()))
    if json:
        _print_json(report)
    else:
        for note in report.notes:
            out.print(f"note: {note}", markup=False)
        for problem in report.problems:
            err.print(f"problem: {problem}", markup=False)
        verdict = "OK" if report.ok else f"{len(report.problems)} problems"
        where = f" on {report.remote} ({report.url})" if report.remote is not None else ""
        out.print(f"{verdict}: {report.objects} objects ({_size(report.bytes)}), {report.manifests} manifests checked{where}",
                  markup=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
       json: JsonFlag = False) -> None:
    """Delete objects and manifests that no ref reaches, and leftover temp files."""
    result = _run(lambda: _repo().gc(dry_run=dry_run))
    if json:
        return _print_json(result)
    verb = "Would delete" if dry_run else "Deleted"
    out.print(f"{verb} {len(result.objects)} objects, {len(result.manifests)} manifests, "
              f"{len(result.temp_files)} temp files ({_size(result.bytes_freed)})")


@app.command("config")
def config_command(
    key: Annotated[Optional[str], typer.Argument(help=f"One of: {', '.join(CONFIG_KEYS)}.")] = None,
    value: Annotated[Optional[str], typer.Argument(help="Set KEY to VALUE (cache: a path; model: a name).")] = None,
    json: JsonFlag = False,
) -> None:
    """Show the settings, show one, or set one (cache, model); partitioning and format are fixed at init."""
    repo = _run(_repo)
    if key is None:
        items = repo.config_items()
        if json:
            return _print_json(items)
        for name, setting in items.items():
            out.print(f"{name} = {setting}")
        return
    if value is None:
        result = _run(lambda: repo.config_get(key))
        if json:
            return _print_json(result)
        out.print(result.value)
        return
    if key == "cache":  # like --cache: relative to -C DIR (the API takes it relative to the repository root)
        value = str((state.directory / value).resolve())
    result = _run(lambda: repo.config_set(key, value))
    if json:
        return _print_json(result)
    out.print(f"Set {result.key} to {result.value} (was {result.previous}).")
    head = _run(repo.head)
    if key == "model" and head is not None:
        latest = _run(lambda: repo.manifest(head))
        if latest.model != result.value:
            out.print(f"v{latest.version} was recorded with model {latest.model}: the next snapshot records the change "
                      f"only with --new-model (`egds snapshot --new-model`).")


remote_app = typer.Typer(no_args_is_help=True, help="Manage remotes: directories or Internet Archive items.")
app.add_typer(remote_app, name="remote")


@remote_app.command("add")
def remote_add(
    name: str,
    url: Annotated[str, typer.Argument(help="A directory path, file:///path, or ia:IDENTIFIER.")],
    title: Annotated[str, typer.Option("--title", help="Dataset title for the remote's card.")] = "",
    description: Annotated[str, typer.Option("--description", help="Dataset description for the card.")] = "",
    license: Annotated[str, typer.Option("--license", help="License shown on the card and set on an archive.org item, e.g. CC-BY-4.0.")] = "",
) -> None:
    """Add a named remote."""
    config = _run(lambda: _repo().remote_add(name, url, title=title, description=description, license=license,
                                                  base=state.directory))
    out.print(f"Added remote {name}: {config.url}")


@remote_app.command("list")
def remote_list(json: JsonFlag = False) -> None:
    """List remotes."""
    remotes = _run(lambda: _repo().remote_list())
    if json:
        return _print_json(remotes)
    for name, config in remotes.items():
        out.fields(name, config.url)


@remote_app.command("remove")
def remote_remove(name: str) -> None:
    """Forget a remote (nothing on the remote is deleted)."""
    config = _run(lambda: _repo().remote_remove(name))
    out.print(f"Removed remote {name} ({config.url})")


@app.command()
def push(
    remote: Annotated[str, typer.Argument(help="Remote name.")] = "origin",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; upload nothing.")] = False,
    wait: Annotated[
        Optional[float],
        typer.Option("--wait", min=0, help="Seconds to wait for archive.org to list the uploads before giving up "
                     "for now (exit 75; run the push again later). Default 90."),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Upload the objects and manifests the remote lacks; once it lists them all, move its ref, then
    rewrite its dataset card."""
    repo = _run(_repo)
    result = _run(lambda: repo.push(remote, dry_run=dry_run, progress=_RichProgress(), wait=wait))
    if json:
        return _print_json(result)
    if dry_run and result.plan is not None:
        plan = result.plan
        out.print(f"Plan for {remote} ({plan.url}): v{plan.version} ({plan.ref[:12]})")
        for item in plan.objects:
            out.print(f"  upload {item.key} ({_size(item.bytes)})", markup=False)
        for key in plan.manifests:
            out.print(f"  upload {key}", markup=False)
        if plan.pending:
            out.print(f"  wait for the remote to list {len(plan.pending)} files an earlier push uploaded", markup=False)
        out.print(f"  {'move' if plan.ref_update else 'keep'} ref egds/refs/main; {plan.objects_skipped} objects already there")
        if plan.card:
            out.print("  upload README.md and manifest.json")
        return
    if not (result.objects_uploaded or result.manifests_uploaded or result.ref_updated or result.card_uploaded):
        out.print(f"{remote} is up to date (v{result.version}).")
    else:
        out.print(f"Pushed v{result.version} to {remote}: {result.objects_uploaded} objects ({_size(result.bytes_uploaded)}), "
                  f"{result.manifests_uploaded} manifests; {result.objects_skipped} objects were already there")
    if result.temp_files_removed:
        out.print(f"Removed {result.temp_files_removed} temp files that interrupted pushes had left on {remote}.", markup=False)


@app.command()
def pull(remote: Annotated[str, typer.Argument(help="Remote name.")] = "origin", json: JsonFlag = False) -> None:
    """Fetch new versions from a remote and check out the latest (never over unsaved work)."""
    repo = _run(_repo)
    result = _run(lambda: repo.pull(remote, progress=_RichProgress()))
    if json:
        return _print_json(result)
    if not result.updated:
        out.print(f"Already up to date with {remote} (v{result.version}).")
    else:
        out.print(f"Pulled v{result.version} ({result.id[:12]}) from {remote}: {result.objects_fetched} objects "
                  f"({_size(result.bytes_fetched)}); cache {result.cache} updated")


@app.command()
def clone(
    url: Annotated[str, typer.Argument(help="ia:IDENTIFIER, a directory path or file:///path.")],
    directory: Annotated[Optional[Path], typer.Argument(help="Where to create the repository.")] = None,
    rev: Annotated[str, typer.Option("--rev", help="Version to check out.")] = "latest",
    partitions: Annotated[Optional[str], typer.Option("--partitions", help="Comma-separated partition keys to fetch.")] = None,
    json: JsonFlag = False,
) -> None:
    """Create a repository from a remote (no credentials needed) and rebuild the cache."""
    keys = [k.strip() for k in partitions.split(",") if k.strip()] if partitions is not None else None
    result = _run(lambda: Repository.clone(url, directory, rev=rev, partitions=keys, progress=_RichProgress(),
                                           base=state.directory))
    if json:
        return _print_json(result)
    if result.already_cloned:
        out.print(f"{result.directory} already is a clone of {result.url} (v{result.version}); "
                  f"`egds -C {result.directory} pull` fetches newer versions", markup=False)
        return
    finished = " (finished the interrupted clone)" if result.resumed else ""
    out.print(f"Cloned {result.url} into {result.directory}{finished}: v{result.version} ({result.id[:12]}), "
              f"{result.rows} rows, {result.objects_fetched} objects ({_size(result.bytes_fetched)}) verified", markup=False)
    if result.partial:
        out.print(f"Partial clone: the cache holds only partitions {', '.join(result.partitions)}")


@app.command("mcp")
def mcp_command(
    directory: Annotated[Optional[Path], typer.Option("-C", help="Project to serve (default: the global -C).")] = None,
) -> None:
    """Serve this repository to AI assistants: a Model Context Protocol server on stdin/stdout."""
    from . import mcp_server  # the MCP SDK is imported only by this command

    _run(lambda: mcp_server.serve(state.directory / directory if directory is not None else state.directory))


def _print_columns(headers: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns two spaces apart, the last one unpadded: never wrapped or cut to the terminal's
    width (a pipe or a narrow window must not lose a message)."""
    cells = [[printable(c) for c in row] for row in [headers, *rows]]
    widths = [max(cell_len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    for row in cells:
        out.print("  ".join([c + " " * (w - cell_len(c)) for c, w in zip(row, widths)] + [row[-1]]).rstrip())


def _relation(result: Any) -> str:
    """How the version a status names stands to the latest one, in words."""
    if result.relation == "older":
        return f"an older version than the latest v{result.version}"
    if result.relation == "newer":
        return f"a version main (v{result.version}) has not reached yet"
    return f"a version outside main's history (latest v{result.version})"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
