"""Small helpers shared by tests: talking to the running stack, waiting for an effect."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import time

import websockets
from django.conf import settings
from django.test import Client

# The identity of commits a test makes in its own repositories (an "origin" it serves from).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "O",
    "GIT_AUTHOR_EMAIL": "o@example.com",
    "GIT_COMMITTER_NAME": "O",
    "GIT_COMMITTER_EMAIL": "o@example.com",
}


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


def wait_until(condition, *, what: str, timeout: float = 30):
    """Poll ``condition`` until it returns something true, and return that; fail saying
    ``what`` never happened after ``timeout`` seconds. The timeout only stops a test that
    would hang: what the test asserts is the effect, never how fast it came."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: still not the case after {timeout} s")
        time.sleep(0.05)


def sleep_seconds() -> str:
    """A duration for ``sleep`` that no other process on the machine uses (other test runs
    share it), so that ``sleepers`` finds exactly this test's sleeps."""
    return f"{random.randrange(10**6, 10**7)}.{os.getpid()}"


def sleepers(seconds: str) -> int:
    """How many ``sleep <seconds>`` processes are running on this machine."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return sum(1 for line in ps.stdout.splitlines() if line.strip() == f"sleep {seconds}")
