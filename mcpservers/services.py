"""Every write to a team's MCP servers and their tools, and the refresh of a server's tool list
(which runs where runs execute: a Celery worker, or a thread of the embedded server — a stdio
server needs the sandbox, which the web process never starts)."""

from __future__ import annotations

import hashlib
import logging
import re
import threading

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Team

from . import client
from .models import (
    FUNCTION_NAME_MAX,
    SEPARATOR,
    Kind,
    MCPServer,
    MCPTool,
    Policy,
    RefreshState,
)

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def server_save(
    *,
    team: Team,
    server: MCPServer | None = None,
    name: str,
    kind: str,
    command: str = "",
    args: list[str] | None = None,
    url: str = "",
    headers: dict[str, str] | None = None,
    enabled: bool = True,
) -> MCPServer:
    """Create a server (``server`` None) or change one; ``headers`` None keeps the stored ones.
    A changed command or URL lists its tools again."""
    if server is None:
        server = MCPServer(team=team)
    before = (server.kind, server.command, server.args_json, server.url)
    server.name, server.kind, server.enabled = name, kind, enabled
    if kind == Kind.STDIO:
        server.command, server.args, server.url, server.headers = command, args or [], "", {}
    else:
        server.command, server.args, server.url = "", [], url
        if headers is not None:
            server.headers = headers
    with transaction.atomic():
        server.save()
        if server.tools.exists() and before != (kind, server.command, server.args_json, url):
            refresh_queue(server)
    return server


def server_delete(*, server: MCPServer) -> None:
    server.delete()


def tool_set(*, tool: MCPTool, enabled: bool, policy: str) -> MCPTool:
    if policy not in Policy.values:
        raise ValueError(f"Unknown policy {policy!r}.")
    tool.enabled, tool.policy = enabled, policy
    tool.save(update_fields=["enabled", "policy"])
    return tool


def refresh_queue(server: MCPServer) -> None:
    """List the server's tools in the worker, once this transaction commits; the page shows
    "Listing tools…" until the row says how it went."""
    MCPServer.objects.filter(pk=server.pk).update(refresh_state=RefreshState.QUEUED)
    server.refresh_state = RefreshState.QUEUED
    server_id = server.pk
    if settings.RUN_EXECUTOR == "celery":
        from .tasks import refresh_tools

        transaction.on_commit(lambda: refresh_tools.delay(server_id))
        return

    def run() -> None:
        from django.db import connection

        try:
            refresh(server_id)
        finally:
            connection.close()  # this thread's own connection

    transaction.on_commit(
        lambda: threading.Thread(target=run, name="tandem-mcp-refresh", daemon=True).start()
    )


def refresh(server_id: int) -> None:
    """Start the server (outside any conversation: a scratch folder and the default sandbox
    image), list its tools and store them; the error, in words, on the row otherwise."""
    server = MCPServer.objects.filter(pk=server_id).first()
    if server is None:
        return
    place = client.Place(image=settings.SANDBOX_DEFAULT_IMAGE)
    try:
        listed = async_to_sync(_list)(spec_of(server), place)
    except client.MCPFailure as exc:
        MCPServer.objects.filter(pk=server.pk).update(
            refresh_state=RefreshState.IDLE, refresh_error=str(exc), refreshed=timezone.now()
        )
        return
    except Exception:
        log.exception("Listing the tools of MCP server %s failed", server)
        MCPServer.objects.filter(pk=server.pk).update(
            refresh_state=RefreshState.IDLE,
            refresh_error="Tandem had an internal error listing the tools.",
            refreshed=timezone.now(),
        )
        return
    tools_store(server=server, listed=listed)


async def _list(spec: client.ServerSpec, place: client.Place) -> list[client.ListedTool]:
    connection = client.Connection(spec, place)
    try:
        return await connection.list_tools()
    finally:
        await connection.close()


def spec_of(server: MCPServer) -> client.ServerSpec:
    return client.ServerSpec(
        name=server.name,
        kind=server.kind,
        command=server.command,
        args=tuple(server.args),
        url=server.url,
        headers=server.headers if server.kind == Kind.HTTP else {},
    )


@transaction.atomic
def tools_store(*, server: MCPServer, listed: list[client.ListedTool]) -> None:
    """The listing onto the rows: new tools come in off (policy "ask"), known ones keep the
    admin's choices and get the new description and schema, missing ones are marked gone."""
    known = {tool.name: tool for tool in MCPTool.objects.select_for_update().filter(server=server)}
    taken = {tool.function_name for tool in known.values() if tool.name in {t.name for t in listed}}
    seen = set()
    for item in listed:
        if item.name in seen:
            continue
        seen.add(item.name)
        tool = known.get(item.name)
        if tool is None:
            tool = MCPTool(server=server, name=item.name[:200])
            tool.function_name = function_name(server.name, item.name, taken)
            taken.add(tool.function_name)
        tool.description = item.description[:4000]
        tool.input_schema = item.input_schema
        tool.read_only = item.read_only
        tool.listed = True
        tool.save()
    MCPTool.objects.filter(server=server).exclude(name__in=seen).update(listed=False)
    MCPServer.objects.filter(pk=server.pk).update(
        refresh_state=RefreshState.IDLE, refresh_error="", refreshed=timezone.now()
    )


def function_name(server: str, tool: str, taken: set[str]) -> str:
    """``<server>__<tool>`` as providers accept function names (letters, digits, _ and -, at
    most 64), unique among ``taken``: a short hash of the tool's own name where it had to be
    changed to fit or clashes."""
    base = f"{server}{SEPARATOR}{_UNSAFE.sub('_', tool)}"
    if len(base) <= FUNCTION_NAME_MAX and base not in taken:
        return base
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    return f"{base[: FUNCTION_NAME_MAX - 9]}_{digest}"
