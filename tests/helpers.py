"""Small helpers shared by tests that talk to the running stack."""

from __future__ import annotations

import asyncio
import json
import time

import websockets
from django.conf import settings
from django.test import Client


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


async def ws_connect(stack, conversation, user, *, origin: str | None = None):
    headers = {"Origin": origin or stack.base_url}
    if user is not None:
        # A session is made with the ORM: in a thread, never on the scenario's event loop.
        cookie = await asyncio.to_thread(session_cookie, user)
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={cookie}"
    return await websockets.connect(
        f"{stack.ws_url}/ws/conversations/{conversation.uuid}/",
        additional_headers=headers,
        open_timeout=10,
    )


async def collect_run(ws, *, timeout: float = 30) -> dict:
    """Read frames until a run ends; returns the deltas, the end event and every frame."""
    deltas: list[dict] = []
    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no run end within {timeout}s; frames: {frames[-5:]}")
        frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        frames.append(frame)
        if frame["t"] == "d":
            deltas.append(frame)
        if frame["t"] in ("run.completed", "run.failed", "run.cancelled"):
            return {"deltas": deltas, "end": frame, "frames": frames}
