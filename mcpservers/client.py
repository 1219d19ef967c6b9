"""Talking to one MCP server with the MCP SDK: a stdio server started inside the sandbox, or a
remote one over streamable HTTP.

A :class:`Connection` lives for one run's execution: it starts the server (or opens the HTTP
session) on first use and keeps it for the calls that follow, and :meth:`Connection.close`
stops it. The SDK's sessions are anyio task groups, which must be entered and left by the same
task, while the agent calls tools from tasks of its own: so each connection has one owner task
that opens the session, waits until it is told to close, and closes it; calls go through the
session from any task.

Nothing here raises for a server's failure: start-up errors, a call that errors or takes longer
than MCP_CALL_SECONDS, and a server that dies are :class:`MCPFailure` sentences, turned into
tool results by the caller. No Django model is imported: the caller hands in a
:class:`ServerSpec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from assistant import sandbox
from assistant.llm.bases import BaseRefused, Rules, check_before_call

if TYPE_CHECKING:
    import mcp_types as types
    from mcp.client.session import ClientSession

# The SDK is imported where it is used, not here: it costs about a second of CPU, and every
# process loads this module at start-up (the provider is registered in apps.py) while only
# workers running a team's MCP tools need it.

log = logging.getLogger(__name__)

URL_RULES = Rules(
    what="The MCP server URL",
    sent="tool calls",
    switch="MCP_ALLOW_PRIVATE_URLS",
    example=" (for a server on your network)",
)
MAX_LINE_BYTES = 8 * 1024 * 1024  # one JSON-RPC message from a stdio server
MAX_RESULT_CHARS = 30_000  # what one tool result may put in front of the model


class MCPFailure(Exception):
    """Something about the server, in a sentence a person can act on."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    kind: str  # "stdio" or "http"
    command: str = ""
    args: tuple[str, ...] = ()
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Place:
    """Where a stdio server runs: the conversation's workspace, or None for a scratch folder."""

    tree: Path | None = None
    git_dir: Path | None = None
    image: str | None = None


@dataclass(frozen=True)
class ListedTool:
    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool


@dataclass
class CallOutcome:
    ok: bool
    text: str


def stdio_mounts() -> dict[str, Path]:
    """MCP_STDIO_MOUNTS as {path inside: host folder}; bad entries are skipped (the system
    check names them)."""
    mounts = {}
    for entry in settings.MCP_STDIO_MOUNTS:
        host, _, inside = entry.partition(":")
        if mount_problem(host, inside) is None:
            mounts[inside] = Path(host)
    return mounts


def mount_problem(host: str, inside: str) -> str | None:
    if not host.startswith("/") or not Path(host).is_dir():
        return f"{host!r} is not a folder of this machine"
    if not inside.startswith("/opt/") or ".." in inside.split("/"):
        return f"{inside!r} must be a path under /opt/ inside the sandbox"
    return None


class Connection:
    """One server for one run's execution; see the module's docstring."""

    def __init__(self, spec: ServerSpec, place: Place | None = None) -> None:
        self.spec = spec
        self.place = place or Place()
        self._owner: asyncio.Task[None] | None = None
        self._session: ClientSession | None = None
        self._process: sandbox.SandboxProcess | None = None
        self._closing = asyncio.Event()
        self._scratch: Path | None = None
        self._lock = asyncio.Lock()
        self._http_status: int | None = None  # the last error status a remote server answered

    # --- The public face ----------------------------------------------------------------------

    async def list_tools(self) -> list[ListedTool]:
        import mcp_types as types

        session = await self._ready()
        listed: list[ListedTool] = []
        cursor: str | None = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            result = await self._request(
                session.list_tools(params=params), settings.MCP_START_SECONDS, "list its tools"
            )
            for tool in result.tools:
                hints = tool.annotations
                listed.append(
                    ListedTool(
                        name=tool.name,
                        description=tool.description or "",
                        input_schema=dict(tool.input_schema or {"type": "object"}),
                        read_only=bool(hints and hints.read_only_hint),
                    )
                )
            cursor = result.next_cursor
            if not cursor or len(listed) > 1000:
                return listed

    async def call(self, name: str, arguments: dict[str, Any]) -> CallOutcome:
        session = await self._ready()
        seconds = settings.MCP_CALL_SECONDS
        result = await self._request(session.call_tool(name, arguments), seconds, f"run {name}")
        return CallOutcome(ok=not result.is_error, text=result_text(result))

    async def close(self) -> None:
        """Stop the server (stdio) or end the session (HTTP); safe to call twice."""
        self._closing.set()
        owner, self._owner = self._owner, None
        if owner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(owner), timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                owner.cancel()
            except Exception as exc:  # it failed earlier; its failure was reported then
                log.debug("MCP server %s had ended: %s", self.spec.name, exc)
        await self._stop_process()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # --- Starting -----------------------------------------------------------------------------

    async def _ready(self) -> ClientSession:
        """The open session, starting the server first if it is not running (or died)."""
        async with self._lock:
            if self._owner is not None and not self._owner.done() and self._session is not None:
                return self._session
            await self._reset()
            ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
            self._closing = asyncio.Event()
            self._owner = asyncio.create_task(self._own(ready), name=f"mcp-{self.spec.name}")
            try:
                self._session = await asyncio.wait_for(
                    asyncio.shield(ready), timeout=settings.MCP_START_SECONDS
                )
            except TimeoutError:
                note = self._stderr_note()
                await self._reset()
                raise MCPFailure(
                    f"The MCP server {self.spec.name} did not start within "
                    f"{settings.MCP_START_SECONDS} s.{note}"
                ) from None
            except MCPFailure:
                await self._reset()
                raise
            return self._session

    async def _reset(self) -> None:
        owner, self._owner, self._session = self._owner, None, None
        self._closing.set()
        if owner is not None and not owner.done():
            owner.cancel()
            with contextlib.suppress(BaseException):
                await owner
        await self._stop_process()

    async def _own(self, ready: asyncio.Future[ClientSession]) -> None:
        """The owner task: open the transport and the session, hand the session over, wait to
        be told to close, close (see the module's docstring)."""
        from mcp.client.session import ClientSession

        try:
            async with AsyncExitStack() as stack:
                streams = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(*streams))
                await session.initialize()
                ready.set_result(session)
                await self._closing.wait()
        except BaseException as exc:
            if not ready.done() and isinstance(exc, asyncio.CancelledError):
                ready.cancel()  # stopped while starting: whoever waited has moved on
            if not ready.done():
                if self._process is not None:  # exited while starting? (reaped a moment later)
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(asyncio.shield(self._process.proc.wait()), 1)
                ready.set_exception(MCPFailure(self._start_failure(exc)))
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not isinstance(exc, Exception):
                raise
            log.info("MCP server %s ended: %s", self.spec.name, _first_error(exc))

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.spec.kind == "http":
            return self._http()
        return self._stdio()

    @asynccontextmanager
    async def _http(self) -> AsyncIterator[Any]:
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        try:
            await check_before_call(self.spec.url, URL_RULES)
        except BaseRefused as exc:
            raise MCPFailure(str(exc)) from None
        client = create_mcp_http_client(headers=dict(self.spec.headers))

        async def note_status(response: Any) -> None:
            # The SDK reports a refused request as "Server returned an error response": the
            # status says whether the token was refused or the URL is wrong.
            if response.status_code >= 400:
                self._http_status = response.status_code

        client.event_hooks["response"].append(note_status)
        async with client, streamable_http_client(self.spec.url, http_client=client) as streams:
            yield streams

    @asynccontextmanager
    async def _stdio(self) -> AsyncIterator[Any]:
        place = self.place
        tree = place.tree
        if tree is None:
            # No workspace: an empty folder of its own (kept across restarts after a crash),
            # removed when the connection closes.
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="tandem-mcp-"))
            tree = self._scratch
        limits = sandbox.SandboxLimits(
            cpu_seconds=max(20, settings.MCP_CALL_SECONDS * 4)  # one process for the whole run
        )
        try:
            self._process = await sandbox.start(
                [self.spec.command, *self.spec.args],
                worktree=tree,
                git_dir=place.git_dir,
                image=place.image,
                limits=limits,
                ro_binds=stdio_mounts(),
            )
        except sandbox.SandboxError as exc:
            raise MCPFailure(f"The MCP server {self.spec.name} could not start: {exc}") from None
        async with _pipes(self._process) as streams:
            yield streams

    async def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await process.close()

    # --- Calls --------------------------------------------------------------------------------

    async def _request(self, request: Any, seconds: float, what: str) -> Any:
        """Await ``request`` with a time limit, watching the server: a result or MCPFailure."""
        owner = self._owner
        work = asyncio.ensure_future(request)
        waits: set[asyncio.Future[Any]] = {work}
        if owner is not None:
            waits.add(owner)
        try:
            done, _ = await asyncio.wait(waits, timeout=seconds, return_when="FIRST_COMPLETED")
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work in done and work.exception() is None:
            return work.result()
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        if not done:
            raise MCPFailure(
                f"The MCP server {self.spec.name} did not {what} within {seconds:g} s."
            )
        if await self._died():
            note = self._exit_note()
            await self._reset()  # the next call starts it again
            raise MCPFailure(f"The MCP server {self.spec.name} stopped{note}.")
        exc = work.exception() if work in done else None
        if self._owner is not None and self._owner.done():
            await self._reset()  # the session ended: the next call opens a new one
        raise MCPFailure(
            f"The MCP server {self.spec.name} could not {what}: {self._why(exc)}"
            if exc
            else f"The MCP server {self.spec.name} closed the connection."
        )

    async def _died(self) -> bool:
        process = self._process
        if process is not None:
            # The session notices the closed pipe before the process is reaped: wait a moment.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.proc.wait()), timeout=1)
            return not process.running
        return self._owner is not None and self._owner.done()

    def _exit_note(self) -> str:
        process = self._process
        if process is None:
            return ""
        code = process.proc.returncode
        note = ""
        if process.memory_killed():
            note = " (it ran out of memory)"
        elif code is not None:
            note = f" (exit code {code})"
        tail = process.stderr_tail(1000)
        return note + (f"; it said: {tail}" if tail else "")

    def _stderr_note(self) -> str:
        tail = self._process.stderr_tail(1000) if self._process else ""
        return f" It said: {tail}" if tail else ""

    def _start_failure(self, exc: BaseException) -> str:
        error = _leaf(exc)
        if isinstance(error, MCPFailure):
            return str(error)
        process = self._process
        if process is not None and not process.running:
            return f"The MCP server {self.spec.name} exited while starting{self._exit_note()}."
        return f"The MCP server {self.spec.name} could not start: {self._why(exc)}"

    def _why(self, exc: BaseException | None) -> str:
        status, self._http_status = self._http_status, None
        if status is not None:
            return _STATUS_WORDS.get(status, f"HTTP {status}") + f" ({_first_error(exc)})"
        return _first_error(exc)


_STATUS_WORDS = {
    401: "HTTP 401: it refused the token or headers",
    403: "HTTP 403: it refused the token or headers",
    404: "HTTP 404: no MCP endpoint at this URL",
}


def _leaf(exc: BaseException) -> BaseException:
    """The first error inside (anyio wraps errors in exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _first_error(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    error = _leaf(exc)
    text = str(error) or type(error).__name__
    if "ConnectError" in type(error).__name__ or "connect" in text.lower() and "refused" in text:
        return f"could not connect ({text})"
    return text


def result_text(result: types.CallToolResult) -> str:
    """A tool result as the model reads it: its text, other content described, clipped."""
    import mcp_types as types

    parts: list[str] = []
    for item in result.content:
        if isinstance(item, types.TextContent):
            parts.append(item.text)
        elif isinstance(item, types.ImageContent):
            parts.append(f"[an image ({item.mime_type}) not shown]")
        elif isinstance(item, types.EmbeddedResource):
            resource = item.resource
            text = getattr(resource, "text", None)
            parts.append(text if text is not None else f"[a resource {resource.uri} not shown]")
        else:
            parts.append(f"[{getattr(item, 'type', 'content')} not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts) or "(no output)"
    if len(text) > MAX_RESULT_CHARS:
        cut = len(text) - MAX_RESULT_CHARS
        text = text[:MAX_RESULT_CHARS] + f"\n[… {cut} more characters not shown]"
    return text


@asynccontextmanager
async def _pipes(process: sandbox.SandboxProcess) -> AsyncIterator[Any]:
    """The SDK's stream pair over a sandboxed process's stdin and stdout: one JSON-RPC message
    per line each way (what the SDK's own stdio client does with a process it starts itself,
    which it can't here: bwrap needs file descriptors passed and a cgroup joined first)."""
    import anyio
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def read() -> None:
        buffer = b""
        async with read_writer:
            while chunk := await process.stdout.read(65536):
                buffer += chunk
                if len(buffer) > MAX_LINE_BYTES and b"\n" not in buffer:
                    await read_writer.send(ValueError("a message larger than 8 MB"))
                    process.kill()
                    return
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValueError as exc:  # not JSON-RPC: a print() in the server, say
                        await read_writer.send(exc)
                        continue
                    await read_writer.send(SessionMessage(message))

    async def write() -> None:
        try:
            async with write_reader:
                async for item in write_reader:
                    data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                    process.stdin.write(data.encode() + b"\n")
                    await process.stdin.drain()
        except (ConnectionError, OSError, anyio.ClosedResourceError):
            await read_writer.aclose()  # the session sees the end instead of waiting forever

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        group.start_soon(write)
        try:
            yield read_stream, write_stream
        finally:
            group.cancel_scope.cancel()
