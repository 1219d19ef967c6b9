"""A stand-in MCP server written with the MCP SDK, for the tests: over stdio (run inside the
sandbox, see tests/test_mcp.py) or over streamable HTTP (a process on the host).

    python mcp_standin.py stdio
    python mcp_standin.py http PORT [TOKEN]   # TOKEN: requests without "Bearer TOKEN" get 401

Its tools: ``echo`` and ``add`` answer, ``fail`` answers with an error result, ``sleep`` takes
its time (for timeouts), ``die`` ends the server's process in the middle of the call, and
``list_files`` shows the folder it runs in (the workspace, inside the sandbox).
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("standin", log_level="ERROR")


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return f"echo: {text}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def fail(message: str) -> str:
    """Always fails, with the message."""
    raise ToolError(message)


@server.tool()
async def sleep(seconds: float) -> str:
    """Wait, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def die() -> str:
    """End the server's process in the middle of the call."""
    sys.stderr.write("standin: dying as asked\n")
    sys.stderr.flush()
    os._exit(3)


@server.tool()
def list_files() -> str:
    """The names in the folder the server runs in."""
    return "\n".join(sorted(os.listdir("."))) or "(empty)"


def _http(port: int, token: str | None) -> None:
    import uvicorn
    from starlette.responses import PlainTextResponse

    app = server.streamable_http_app()

    async def guarded(scope, receive, send):
        headers = dict(scope.get("headers") or [])
        wanted = f"Bearer {token}"
        if token and scope["type"] == "http" and headers.get(b"authorization") != wanted.encode():
            await PlainTextResponse("no token", status_code=401)(scope, receive, send)
            return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        _http(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
