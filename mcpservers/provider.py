"""The team's MCP tools, offered to the agent through the Toolbox (assistant/tools/toolbox.py).

For each run execution the provider reads the team's enabled servers and their enabled tools
and returns one Entry per tool, named ``<server>__<tool>``, with the admin's policy. Nothing is
started then: a server starts on the first call of one of its tools and stays up for the rest
of the execution; :meth:`Pool.aclose` (from ``Toolbox.aclose()``) stops them all.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from assistant import repos
from assistant.tools import toolbox
from assistant.tools.base import Tool, ToolContext, ToolResult

from . import client
from .models import Kind, MCPServer, MCPTool
from .services import spec_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Offer:
    """One enabled tool of an enabled server, read from the database for one run."""

    server: client.ServerSpec
    tool: str  # the server's name for it
    function_name: str
    description: str
    schema: dict[str, Any]
    read_only: bool
    policy: str


def entries(request: toolbox.ToolboxRequest) -> list[toolbox.Entry]:
    """The Toolbox reader (registered in apps.py): one entry per enabled tool of the team's
    enabled servers, under its policy, offered with or without a repository. "never" tools are
    entries too, so a call the model makes anyway is refused in words, not "unknown"."""
    offers = offers_for(request.team.pk)
    if not offers:
        return []
    pool = Pool(place_of(request.workspace))
    request.on_close(pool.aclose)
    return [
        toolbox.Entry(
            tool=tool_of(offer, pool),
            source=f"mcp:{offer.server.name}",
            policy=offer.policy,
            needs_workspace=False,
        )
        for offer in offers
    ]


def offers_for(team_id: int) -> list[Offer]:
    tools = (
        MCPTool.objects.filter(
            server__team_id=team_id, server__enabled=True, enabled=True, listed=True
        )
        .select_related("server")
        .order_by("server__name", "name")
    )
    specs: dict[int, client.ServerSpec] = {}
    offers = []
    for tool in tools:
        server: MCPServer = tool.server
        if server.pk not in specs:
            specs[server.pk] = spec_of(server)
        offers.append(
            Offer(
                server=specs[server.pk],
                tool=tool.name,
                function_name=tool.function_name,
                description=_description(server, tool),
                schema=_schema(tool.input_schema),
                # A stdio server runs in the workspace and may change its files whatever it
                # says of itself; a remote one cannot reach it.
                read_only=server.kind == Kind.HTTP,
                policy=tool.policy,
            )
        )
    return offers


def _description(server: MCPServer, tool: MCPTool) -> str:
    text = tool.description.strip() or f"The {tool.name} tool."
    return f"{text}\n(Tool {tool.name} of the team's MCP server {server.name}.)"[:2000]


def _schema(schema: Any) -> dict[str, Any]:
    """The server's input schema as providers accept function parameters: an object."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return {"type": "object", "properties": {}}
    return {key: value for key, value in schema.items() if key not in ("$schema", "title")}


@dataclass
class Pool:
    """The run execution's connections, one per server, started on first use."""

    place: client.Place
    connections: dict[str, client.Connection] = field(default_factory=dict)

    def connection(self, spec: client.ServerSpec) -> client.Connection:
        if spec.name not in self.connections:
            self.connections[spec.name] = client.Connection(spec, self.place)
        return self.connections[spec.name]

    async def call(self, offer: Offer, args: dict[str, Any]) -> ToolResult:
        connection = self.connection(offer.server)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outcome = await connection.call(offer.tool, args)
        except client.MCPFailure as exc:
            return ToolResult(ok=False, output=str(exc), duration_ms=_ms(loop, started))
        return ToolResult(ok=outcome.ok, output=outcome.text, duration_ms=_ms(loop, started))

    async def aclose(self) -> None:
        connections, self.connections = list(self.connections.values()), {}
        results = await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("Stopping an MCP server failed: %s", result)


def _ms(loop: asyncio.AbstractEventLoop, started: float) -> int:
    return int((loop.time() - started) * 1000)


def place_of(workspace: Any) -> client.Place:
    """Where this run's stdio servers run: the conversation's workspace in its repository's
    image, or (no repository) a scratch folder in the default image."""
    if workspace is None:
        return client.Place(image=settings.SANDBOX_DEFAULT_IMAGE)
    return client.Place(
        tree=repos.workspace_path(workspace=workspace),
        git_dir=repos.git_dir(workspace=workspace),
        image=workspace.repository.sandbox_image,
    )


def tool_of(offer: Offer, pool: Pool) -> Tool:
    async def run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        return await pool.call(offer, args)

    return Tool(
        name=offer.function_name,
        description=offer.description,
        parameters=offer.schema,
        read_only=offer.read_only,
        run=run,
    )
