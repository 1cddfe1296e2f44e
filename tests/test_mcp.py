"""`egds mcp`: started as a subprocess and driven over stdio with the MCP SDK's own client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

pytest.importorskip("mcp")

from mcp import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

from egregora_ds import EgdsError, Repository  # noqa: E402

from conftest import load_cache, make_chunks, make_embeddings, write_cache  # noqa: E402

pytestmark = pytest.mark.anyio

SESSION_TIMEOUT = 25  # seconds for a whole conversation with one server
CALL_TIMEOUT = 10  # seconds for any single request

READ_ONLY = {"status", "log", "show", "diff", "verify", "remote_list", "config"}
DESTRUCTIVE = {"checkout", "pull", "gc"}
ALL_TOOLS = READ_ONLY | DESTRUCTIVE | {"snapshot", "push", "clone", "config_set"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def egds_mcp(project: Path, log: Path) -> AsyncIterator[ClientSession]:
    """`egds mcp -C project` in a subprocess (started from elsewhere), as an initialised client session."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "egregora_ds.cli", "mcp", "-C", str(project)], cwd=str(log.parent)
    )
    with open(log, "w") as errlog, anyio.fail_after(SESSION_TIMEOUT):
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, arguments: dict[str, Any] | None = None, **kw: Any) -> Any:
    """The tool's structured content; fails the test when the tool reports an error."""
    with anyio.fail_after(CALL_TIMEOUT):
        result = await session.call_tool(tool, arguments or {}, **kw)
    assert not result.is_error, result.content[0].text
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


async def call_error(session: ClientSession, tool: str, arguments: dict[str, Any]) -> str:
    """The one-line message of a tool error."""
    with anyio.fail_after(CALL_TIMEOUT):
        result = await session.call_tool(tool, arguments)
    assert result.is_error
    assert len(result.content) == 1
    return result.content[0].text


async def read(session: ClientSession, uri: str) -> str:
    with anyio.fail_after(CALL_TIMEOUT):
        result = await session.read_resource(uri)
    return result.contents[0].text


def expected_error(action: Any) -> str:
    with pytest.raises(EgdsError) as info:
        action()
    return str(info.value)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository whose cache holds 60 chunks over 6 months (nothing recorded yet)."""
    root = tmp_path / "project"
    repo = Repository.init(root, cache="cache/rag", model="test-model")
    write_cache(repo.cache_path, make_chunks(60), make_embeddings(60), index={"newsletters": 6})
    return root


async def test_every_tool_is_listed_with_schemas_and_safety_annotations(project: Path, tmp_path: Path) -> None:
    async with egds_mcp(project, tmp_path / "server.log") as session:
        with anyio.fail_after(CALL_TIMEOUT):
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            templates = (await session.list_resource_templates()).resource_templates
            resources = (await session.list_resources()).resources

    assert set(tools) == ALL_TOOLS
    for name, tool in tools.items():
        hints = tool.annotations
        assert tool.description and tool.input_schema["type"] == "object" and tool.output_schema["type"] == "object"
        assert hints.read_only_hint is (name in READ_ONLY), name
        assert hints.destructive_hint is (name in DESTRUCTIVE), name
        if name in DESTRUCTIVE:
            assert "DESTRUCTIVE" in tool.description
    assert "LOST" in tools["checkout"].description and "force" in tools["checkout"].input_schema["properties"]
    assert tools["push"].annotations.open_world_hint and not tools["log"].annotations.open_world_hint
    assert tools["diff"].input_schema["required"] == ["a"]
    assert [t.uri_template for t in templates] == ["egds://manifest/{rev}"]
    assert [str(r.uri) for r in resources] == ["egds://card"]


async def test_an_assistant_can_record_push_clone_and_restore_a_cache(project: Path, tmp_path: Path) -> None:
    repo = Repository.open(project)
    v1_pickle, v1_metadata, v1_index = load_cache(repo.cache_path)
    repo.remote_add("backup", str(tmp_path / "remote"))
    progress: dict[str, list[tuple[float, float | None, str | None]]] = {"snapshot": [], "checkout": []}

    def recorder(tool: str) -> Any:
        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress[tool].append((done, total, message))

        return on_progress

    async with egds_mcp(project, tmp_path / "server.log") as session:
        assert (await call(session, "status"))["clean"] is False
        first = await call(session, "snapshot", {"message": "first"}, progress_callback=recorder("snapshot"))
        assert (first["created"], first["version"], first["rows"]) == (True, 1, 60)

        write_cache(repo.cache_path, make_chunks(90, months=9), make_embeddings(90, seed=1), index={"newsletters": 9})
        second = await call(session, "snapshot", {"message": "three more months"})
        assert second["version"] == 2

        log = (await call(session, "log"))["result"]
        assert [(e["version"], e["message"]) for e in log] == [(2, "three more months"), (1, "first")]
        assert (await call(session, "log", {"limit": 1}))["result"] == log[:1]

        diff = await call(session, "diff", {"a": "v1", "b": "v2", "ids": True})
        assert (diff["a"], diff["b"]) == (log[1]["id"], log[0]["id"])
        assert diff["partitions"]["added"] and diff["chunks"]["added"] == len(diff["ids"]["added"]) > 0

        plan = await call(session, "push", {"remote": "backup", "dry_run": True})
        assert plan["dry_run"] and plan["plan"]["objects"] and not (tmp_path / "remote").exists()
        pushed = await call(session, "push", {"remote": "backup"})
        assert (pushed["version"], pushed["ref_updated"]) == (2, True)

        cloned = await call(session, "clone", {"url": "../remote", "directory": "../copy"})
        assert Path(cloned["directory"]) == (tmp_path / "copy").resolve() and cloned["version"] == 2

        restored = await call(session, "checkout", {"rev": "v1", "cache": "restored"},
                              progress_callback=recorder("checkout"))
        assert (restored["version"], Path(restored["cache"])) == (1, (project / "restored").resolve())
        assert (await call(session, "verify", {"deep": True}))["ok"] is True

        shown = await call(session, "show", {"rev": "v1"})
        manifest = json.loads(await read(session, "egds://manifest/v1"))
        assert manifest == shown and manifest["id"] == log[1]["id"] and manifest["manifest"]["rows"] == 60
        assert json.loads(await read(session, "egds://manifest/latest~1")) == shown
        card = await read(session, "egds://card")

    # The v1 cache the assistant restored is the original, bit for bit.
    pickled, metadata, index = load_cache(project / "restored")
    assert pickled["embeddings"].dtype == v1_pickle["embeddings"].dtype
    assert pickled["embeddings"].tobytes() == v1_pickle["embeddings"].tobytes()
    assert (metadata, index) == (v1_metadata, v1_index)
    # The clone holds v2.
    clone_pickle, clone_metadata, _ = load_cache(Repository.open(tmp_path / "copy").cache_path)
    assert np.array_equal(clone_pickle["embeddings"], make_embeddings(90, seed=1))
    assert clone_metadata["chunks"] == make_chunks(90, months=9)
    # The card is the one push publishes.
    assert card.startswith("# ") and "v2" in card and "three more months" in card
    assert card == (tmp_path / "remote" / "README.md").read_text(encoding="utf-8")
    # Progress went up with every notification and ended at the total (sent before the result).
    assert progress["snapshot"][-1] == (60, 60, "writing partitions: 60/60 rows")
    for tool, updates in progress.items():
        values = [done for done, _, _ in updates]
        assert values and values == sorted(set(values)), tool
        assert updates[-1][0] == updates[-1][1], tool


async def test_bad_input_is_a_one_line_tool_error_and_the_server_keeps_answering(project: Path, tmp_path: Path) -> None:
    repo = Repository.open(project)
    repo.snapshot("v1")
    unknown_rev = expected_error(lambda: repo.show("v99"))
    missing_cache = expected_error(lambda: repo.status(project / "nowhere"))

    async with egds_mcp(project, tmp_path / "server.log") as session:
        assert await call_error(session, "show", {"rev": "v99"}) == unknown_rev
        assert await call_error(session, "checkout", {"rev": "v99", "cache": "elsewhere"}) == unknown_rev
        assert await call_error(session, "status", {"cache": "nowhere"}) == missing_cache
        assert await call_error(session, "push", {"remote": "nope"}) == expected_error(lambda: repo.push("nope"))
        bad_type = await call_error(session, "log", {"limit": "ten"})
        assert bad_type.startswith("invalid arguments for log:") and "limit" in bad_type
        assert "unknown field" in await call_error(session, "diff", {"a": "v1", "colour": "red"})
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(MCPError) as info:
            await session.read_resource("egds://manifest/v99")
        assert info.value.message == unknown_rev
        assert (await call(session, "log"))["result"][0]["version"] == 1
    for message in (unknown_rev, missing_cache, bad_type):
        assert "\n" not in message and "Traceback" not in message
    assert "Traceback" not in (tmp_path / "server.log").read_text()


async def test_the_error_text_is_the_one_the_cli_prints(project: Path, tmp_path: Path) -> None:
    cli = subprocess.run([sys.executable, "-m", "egregora_ds.cli", "-C", str(project), "show", "v7"],
                         capture_output=True, text=True, timeout=CALL_TIMEOUT)
    async with egds_mcp(project, tmp_path / "server.log") as session:
        message = await call_error(session, "show", {"rev": "v7"})
    assert cli.returncode != 0 and cli.stderr.strip() == f"egds: error: {message}"


async def test_a_repository_created_after_the_server_started_is_found(tmp_path: Path) -> None:
    project = tmp_path / "later"
    project.mkdir()
    async with egds_mcp(project, tmp_path / "server.log") as session:
        assert "not inside an egds repository" in await call_error(session, "log", {})
        Repository.init(project, model="test-model")
        assert (await call(session, "log"))["result"] == []


async def test_an_unexpected_exception_is_a_one_line_internal_error(
    monkeypatch: pytest.MonkeyPatch, project: Path
) -> None:
    """In process (a subprocess cannot be made to fail this way): the SDK's in-memory client."""
    from mcp import Client

    from egregora_ds.mcp_server import EgdsMcpServer

    def broken(self: Repository, limit: int | None = None) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(Repository, "log", broken)
    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(EgdsMcpServer(project).server) as client:
            result = await client.call_tool("log", {})
            assert result.is_error
            assert result.content[0].text == "internal error: RuntimeError: disk on fire second line"
            assert (await client.call_tool("status", {})).is_error is False


def test_progress_from_many_threads_is_counted_once_and_only_grows() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from egregora_ds.mcp_server import _McpProgress

    progress = _McpProgress()
    assert progress.pending() is None  # nothing begun: nothing to say
    progress.begin("pushing to backup", 8000, unit="bytes")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: [progress.advance(1) for _ in range(1000)], range(8)))
    assert progress.pending() == (8000, 8000, "pushing to backup: 8000/8000 bytes")
    assert progress.pending() is None  # no news, no notification
    progress.end()
    progress.begin("reading partitions", 30, unit="bytes")
    assert progress.pending() is None  # the new phase starts where the last ended: not yet above it
    progress.advance(10)
    assert progress.pending() == (8010, 8030, "reading partitions: 10/30 bytes")
    progress.begin("fetching objects", None, unit="bytes")
    progress.advance(5)
    assert progress.pending() == (8015, None, "fetching objects: 5 bytes")


async def test_the_last_progress_is_delivered_even_when_the_call_ends_while_it_is_being_sent() -> None:
    import time
    from types import SimpleNamespace

    from egregora_ds.mcp_server import PROGRESS_INTERVAL, _in_thread

    sent: list[tuple[float, float | None, str | None]] = []

    async def slow_send(done: float, total: float | None = None, message: str | None = None) -> None:
        await anyio.sleep(4 * PROGRESS_INTERVAL)  # a slow client
        sent.append((done, total, message))

    ctx = SimpleNamespace(meta={"progress_token": 1}, session=SimpleNamespace(report_progress=slow_send))

    def operation(progress: Any) -> str:
        progress.begin("writing partitions", 2, unit="rows")
        progress.advance(2)
        time.sleep(2 * PROGRESS_INTERVAL)  # the relay picks up 2/2 and is still sending it when the call ends
        progress.end()
        return "done"

    with anyio.fail_after(CALL_TIMEOUT):
        assert await _in_thread(ctx, operation, True) == "done"  # type: ignore[arg-type]
    assert sent == [(2, 2, "writing partitions: 2/2 rows")]


def test_a_failure_of_the_machine_reaches_the_client_as_the_clis_one_line_not_an_internal_error() -> None:
    import errno

    from egregora_ds.mcp_server import _one_line

    message = _one_line(OSError(errno.ENOSPC, "No space left on device", "/data/.egds/objects/ab/x.parquet"))
    assert message.startswith("No space left on device: /data/.egds/objects/ab/x.parquet; free some space")
    assert "\n" not in message and "internal error" not in message
