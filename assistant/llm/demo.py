"""The demo model: the project's scripted fake provider, started inside this process.

Used when no model is configured, so a new installation streams replies end to end. It is
labelled "Demo model (scripted, not AI)" wherever a model name is shown.
"""

from __future__ import annotations

import asyncio

_ports: dict[int, int] = {}
_locks: dict[int, asyncio.Lock] = {}


async def demo_api_base() -> str:
    """Start the fake provider on the running loop once, and return its OpenAI base URL."""
    from assistant.fakellm.server import start_server

    key = id(asyncio.get_running_loop())
    lock = _locks.setdefault(key, asyncio.Lock())
    async with lock:
        if key not in _ports:
            _runner, port = await start_server("127.0.0.1", 0)
            _ports[key] = port
    return f"http://127.0.0.1:{_ports[key]}/v1"
