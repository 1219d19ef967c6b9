#!/usr/bin/env python
"""What an MCP tool costs: a server's start-up and one call, over stdio in the sandbox and over
streamable HTTP, with the stand-in server (tests/mcp_standin.py, written with the SDK).

    .venv/bin/python bench/mcp_servers.py [--starts 5] [--calls 50] [--no-write]

1. Start-up (stdio): ``--starts`` times, a Connection to the stand-in in the sandbox (the host's
   python3 with the SDK mounted read-only, as the tests run it) until its tools are listed —
   what the first MCP call of every run execution pays — then closed (stdin closed, the exit
   awaited). Median and max of each.
2. Calls: ``--calls`` calls of the stand-in's ``add`` on one open connection, stdio and HTTP
   (the stand-in on 127.0.0.1): median and p95 per call.

Prints a table and writes it to docs/benchmarks.md under "## MCP servers (bench/mcp_servers.py)",
replacing only that section. Needs a database-free Django set-up only (settings are read).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.test_settings")

import django  # noqa: E402

django.setup()

from mcpservers.client import Connection, Place, ServerSpec  # noqa: E402

HEADING = "## MCP servers (bench/mcp_servers.py)"
STDIO = ServerSpec(
    name="standin",
    kind="stdio",
    command="env",
    args=("PYTHONPATH=/opt/mcp-sdk", "python3", "/opt/standin/mcp_standin.py", "stdio"),
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def starts(tree: Path, count: int) -> tuple[list[float], list[float]]:
    up, down = [], []
    for _ in range(count):
        conn = Connection(STDIO, Place(tree=tree))
        started = time.perf_counter()
        await conn.list_tools()
        up.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await conn.close()
        down.append((time.perf_counter() - started) * 1000)
    return up, down


async def calls(spec: ServerSpec, place: Place, count: int) -> list[float]:
    conn = Connection(spec, place)
    try:
        await conn.list_tools()
        times = []
        for i in range(count):
            started = time.perf_counter()
            outcome = await conn.call("add", {"a": i, "b": 1})
            times.append((time.perf_counter() - started) * 1000)
            assert outcome.ok and outcome.text == str(i + 1), outcome
        return times
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    opts = parser.parse_args()

    parent = Path(tempfile.mkdtemp(prefix="tandem-bench-mcp-"))
    parent.chmod(0o711)
    tree = parent / "wt"
    tree.mkdir()
    port = free_port()
    server = None
    try:
        up, down = asyncio.run(starts(tree, opts.starts))
        stdio = asyncio.run(calls(STDIO, Place(tree=tree), opts.calls))
        # Started only now: its own start-up would compete with the ones measured above.
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "mcp_standin.py"), "http", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        http = ServerSpec(name="standin", kind="http", url=f"http://127.0.0.1:{port}/mcp")
        remote = asyncio.run(calls(http, Place(), opts.calls))
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(parent, ignore_errors=True)

    load = os.getloadavg()[0]
    lines = [
        HEADING,
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, load "
        f"average {load:.1f} while it ran (the machine is shared: read the figures with it).",
        "",
        "| What | n | median | p95 / max |",
        "|---|---|---|---|",
        f"| stdio server start in the sandbox, until its tools are listed | {len(up)} | "
        f"{statistics.median(up):.0f} ms | {max(up):.0f} ms |",
        f"| stdio server stop (stdin closed, exit awaited) | {len(down)} | "
        f"{statistics.median(down):.0f} ms | {max(down):.0f} ms |",
        f"| one call, stdio (sandboxed process, pipes) | {len(stdio)} | "
        f"{statistics.median(stdio):.1f} ms | {pct(stdio, 0.95):.1f} ms |",
        f"| one call, streamable HTTP on 127.0.0.1 | {len(remote)} | "
        f"{statistics.median(remote):.1f} ms | {pct(remote, 0.95):.1f} ms |",
        "",
        "The start is the stand-in's Python importing the SDK (pydantic, anyio, starlette) more "
        "than the sandbox (~15 ms, see above); it is paid once per run execution that uses the "
        "server, again after a park for an approval. The stop is paid when the execution ends, "
        "before the run is marked finished: the server gets 2 s to exit once its stdin closes "
        "(the MCP spec's shutdown), then bwrap is killed.",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    if not opts.no_write:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text()
        pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
        text = pattern.sub(table + "\n", text) if pattern.search(text) else text + "\n" + table
        doc.write_text(text)


if __name__ == "__main__":
    main()
