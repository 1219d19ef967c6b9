#!/usr/bin/env python
"""Streaming benchmark over the public path, on the production topology (issue 14).

    .venv/bin/python bench/stream.py [--streams 1,10,50,200] [--tokens 100] [--delay-ms 10]
        [--repeat 3] [--viewers sse,ws] [--port-base PORT] [--json FILE] [--profile DIR]
        [--peer URL --peer-key TOKEN --peer-pid PID]

See docs/benchmarks.md for what it measured on the project's machine.

What runs (all on this machine, as subprocesses this script starts and always stops):
``python -m config.serve`` (Daphne on uvloop; started first and alone, to time its start-up
to the first answered request and read its idle RSS), the fake LLM provider (``manage.py
fakellm``) and one Celery worker (``--pool threads``, concurrency >= streams), against the local
PostgreSQL (a database of its own, created, migrated and dropped here) and Redis (a database
number of its own, flushed before and after).

Each run of N streams, after waiting (at most --quiet-wait seconds) for the machine to go quiet:

1. Baseline: N concurrent streaming requests straight to the provider (aiohttp): its own time
   to first token and per-token latency.
2. Tandem: N fresh conversations, each watched by the API's event stream (SSE, an API key)
   and a WebSocket (a session cookie); then N messages POSTed at once to
   ``/api/v1/conversations/{id}/messages`` with the API key.
3. With --peer: the same N requests to an Open WebUI (``/api/chat/completions``, streaming),
   after Tandem's, so the two alternate; ratios are printed at the end.

The provider is scripted ``[[tokens=T delay_ms=D stamp=1]]``: each word is the provider's
``time.time()`` when it wrote it. Figures: per word, receive time - emit time of every word
(SSE and WebSocket separately); first word added (POST sent -> first word, minus the
provider's TTFT); POST answered and run.started seen; failed POSTs, refused viewers, lost
deltas, saved == streamed; CPU per reply of the web process + the worker (``/proc``); the peak
of PostgreSQL connections to the bench's database (sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
END_EVENTS = ("run.completed", "run.failed", "run.cancelled")
PR_SET_PDEATHSIG = 1


# --- small utilities -------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for an empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy() -> float:
    """CPU seconds spent not idle by the whole machine (all cores)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def find_pid(comm: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                    return int(entry)
            except OSError:
                continue
    return None


def _die_with_parent() -> None:
    # The children get SIGTERM if this process dies without cleaning up (SIGKILL, say).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout}s")


def wait_for_answer(url: str, proc: subprocess.Popen, name: str, timeout: float = 60) -> float:
    """Poll ``url`` every 10 ms until it answers 200; the monotonic time it first did."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic()
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"{name} did not answer {url} within {timeout}s")


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


# --- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    env: dict[str, str]
    web_port: int
    llm_port: int
    logdir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    startup_s: float = math.nan  # `python -m config.serve` spawned -> first answered request
    startup_cpu: float = math.nan  # the web process's CPU seconds at that moment

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def llm_url(self) -> str:
        return f"http://127.0.0.1:{self.llm_port}/v1/chat/completions"

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.logdir / f"{name}.log").open("w")
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches only us; we stop them in order
            preexec_fn=_die_with_parent,
        )
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop on SIGTERM; killing it", file=sys.stderr)
                proc.kill()
                proc.wait(5)
        self.procs.clear()


def start_stack(
    env: dict[str, str],
    concurrency: int,
    logdir: Path,
    *,
    raw_llm: bool = False,
    port_base: int = 0,
) -> Stack:
    web_port = port_base or free_port()
    llm_port = port_base + 1 if port_base else free_port()
    stack = Stack(env=env, web_port=web_port, llm_port=llm_port, logdir=logdir)
    env["LLM_API_BASE"] = f"http://127.0.0.1:{stack.llm_port}/v1"
    env["SITE_URL"] = stack.base_url
    py = sys.executable
    try:
        # The web process first and alone: its start-up (spawn -> first answered request) is a
        # figure of its own, and the others starting beside it on 2 cores would inflate it.
        began = time.monotonic()
        web = stack.spawn(
            "daphne", [py, "-m", "config.serve", "-b", "127.0.0.1", "-p", str(stack.web_port)]
        )
        stack.startup_s = wait_for_answer(f"{stack.base_url}/healthz", web, "Daphne") - began
        # Its CPU by then: on a shared machine the wall time mostly says how busy it was.
        stack.startup_cpu = proc_cpu(web.pid)
        llm = stack.spawn("fakellm", [py, "manage.py", "fakellm", "--port", str(stack.llm_port)])
        worker = stack.spawn(
            "worker",
            [
                *([py, "bench/rawllm_worker.py"] if raw_llm else [py, "-m", "celery"]),
                "-A", "config", "worker", "--pool", "threads",
                "--concurrency", str(concurrency), "--loglevel", "INFO",
                "--without-heartbeat", "--without-gossip", "--without-mingle",
            ],
        )  # fmt: skip
        wait_for_port(stack.llm_port, llm, "fake LLM")
        deadline = time.monotonic() + 60
        ready = ("ready.", "rawllm:") if raw_llm else ("ready.",)
        while not all(word in stack.log_tail("worker", 100_000) for word in ready):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Celery worker did not start:\n" + stack.log_tail("worker"))
            time.sleep(0.1)
    except BaseException:
        stack.stop()
        raise
    return stack


# --- database and Django ---------------------------------------------------------------------


def stack_env(pg_url: str, db: str, redis_url: str, logdir: Path) -> dict[str, str]:
    """The environment of a bench's stack: production's settings (Celery, the Redis layer, the
    connection pool) on a database and a Redis number of the bench's own."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"{pg_url}/{db}",
        "REDIS_URL": redis_url,
        "RUN_EXECUTOR": "celery",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "TANDEM_DATA_DIR": str(logdir / "data"),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "WARNING",
        # 200 streams open 200 event streams and POST 200 messages within a second with one
        # key: the API's per-minute limit would refuse most of them.
        "API_RATE_PER_MINUTE": "0",
    }


def recreate_database(pg_url: str, name: str, *, drop_only: bool = False) -> None:
    import psycopg

    with psycopg.connect(f"{pg_url}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


def migrate(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode:
        raise RuntimeError("migrate failed:\n" + result.stdout[-2000:] + result.stderr[-3000:])


def django_setup(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()


def make_user_and_team():
    from accounts.models import User
    from accounts.services import team_create

    user = User.objects.create_user(email="bench@example.com", password=None)
    team = team_create(name="Bench", slug="bench", owner=user)
    return user, team


def api_key(user, team) -> str:
    from accounts.models import Membership
    from api.models import Scope
    from api.services import apikey_create

    membership = Membership.objects.get(team=team, user=user)
    return apikey_create(membership=membership, name="bench", scope=Scope.WRITE).raw


def session_cookie(user) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def make_conversations(team, user, count: int, label: str) -> list:
    from assistant.models import Conversation

    objs = [
        Conversation(team=team, created_by=user, title=f"{label} #{i}", title_is_custom=True)
        for i in range(count)
    ]
    return Conversation.objects.bulk_create(objs)


def saved_replies(run_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """run uuid -> (status, saved assistant text or None)."""
    from assistant.models import Message, Run

    runs = {str(r.uuid): r for r in Run.objects.filter(uuid__in=run_ids)}
    texts = {
        str(run_uuid): content
        for run_uuid, content in Message.objects.filter(run__uuid__in=run_ids).values_list(
            "run__uuid", "content"
        )
    }
    return {rid: (runs[rid].status, texts.get(rid)) for rid in run_ids if rid in runs}


# --- measurement -----------------------------------------------------------------------------


@dataclass
class CpuMark:
    at: float
    procs: dict[str, float]
    system: float


def cpu_mark(pids: dict[str, int]) -> CpuMark:
    return CpuMark(
        time.monotonic(), {name: proc_cpu(pid) for name, pid in pids.items()}, system_busy()
    )


async def wait_for_quiet(pids: dict[str, int], limit: float, threshold: float = 0.3) -> float:
    """Wait (at most ``limit`` seconds) until processes other than ours use less than
    ``threshold`` cores over a second; return the last second's figure. Others' work on a shared
    machine shows up as latency here, so each round starts on a quiet machine if it can."""
    deadline = time.monotonic() + limit
    while True:
        before = cpu_mark(pids)
        await asyncio.sleep(1.0)
        after = cpu_mark(pids)
        ours = sum(
            after.procs[k] - before.procs[k] for k in pids if after.procs[k] == after.procs[k]
        )
        other = (after.system - before.system - ours) / (after.at - before.at)
        if other < threshold or time.monotonic() >= deadline:
            return other


async def baseline(llm_url: str, n: int, directives: str, timeout: float) -> dict:
    """N concurrent streaming requests straight to the provider."""
    import aiohttp

    body = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": f"Baseline {directives}"}],
    }
    ttfts: list[float] = []
    token_lat: list[float] = []
    errors = 0

    async def one(session) -> None:
        nonlocal errors
        stamps: list[tuple[float, str]] = []
        started = time.time()
        try:
            async with session.post(llm_url, json=body) as resp:
                resp.raise_for_status()
                async for line in resp.content:
                    received = time.time()
                    if not line.startswith(b"data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    choices = chunk.get("choices") or []
                    content = choices[0]["delta"].get("content") if choices else None
                    if content:
                        stamps.append((received, content))
        except Exception:
            errors += 1
            return
        if stamps:
            ttfts.append(stamps[0][0] - started)
        for received, content in stamps:
            token_lat.extend(received - float(s) for s in content.split())

    connector = aiohttp.TCPConnector(limit=0)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.gather(*(one(session) for _ in range(n)))
    return {"ttft": ttfts, "token_lat": token_lat, "errors": errors}


@dataclass
class Watch:
    """One conversation's WebSocket and what arrived on it."""

    conversation: object
    ws: object = None
    frames: list[tuple[float, str]] = field(default_factory=list)
    sent_at: float = 0.0
    run_id: str = ""
    ended: str = ""
    error: str = ""
    post_status: int = 0  # the POST's HTTP status (202 expected); 0: no answer
    post_done: float = 0.0
    open_error: str = ""  # a viewer could not connect
    post_error: str = ""
    sse: object = None  # the open event-stream response
    sse_frames: list[tuple[float, str, str]] = field(default_factory=list)  # (t, event, data)
    sse_ended: str = ""
    sse_error: str = ""


async def ws_open(stack: Stack, watch: Watch, cookie: str) -> None:
    import websockets

    watch.ws = await websockets.connect(
        f"ws://127.0.0.1:{stack.web_port}/ws/conversations/{watch.conversation.uuid}/",
        additional_headers={"Origin": stack.base_url, "Cookie": cookie},
        open_timeout=30,
        ping_interval=None,
        compression=None,  # Daphne does not accept permessage-deflate anyway
        max_queue=None,
    )
    first = json.loads(await asyncio.wait_for(watch.ws.recv(), 30))
    if first.get("t") != "sync":
        raise RuntimeError(f"expected a sync frame first, got {first}")


async def sse_open(session, stack: Stack, watch: Watch, key: str) -> None:
    """GET the conversation's event stream with the API key; wait for its snapshot."""
    url = f"{stack.base_url}/api/v1/conversations/{watch.conversation.uuid}/events"
    resp = await session.get(url, headers={"Authorization": f"Bearer {key}"})
    if resp.status != 200:
        raise RuntimeError(f"event stream answered {resp.status}: {await resp.text()}")
    watch.sse = resp
    event = ""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 30)
        if not line:
            raise RuntimeError("event stream closed before its snapshot")
        if line.startswith(b"event: "):
            event = line[7:].strip().decode()
        elif line == b"\n" and event == "snapshot":
            return


async def sse_read(watch: Watch) -> None:
    """Record every event of the stream with its receive time until the run ends."""
    frames = watch.sse_frames
    resp = watch.sse
    event = ""
    try:
        async for line in resp.content:
            if line.startswith(b"data: "):
                frames.append((time.time(), event, line[6:].decode()))
                if event in END_EVENTS:
                    watch.sse_ended = event
                    return
            elif line.startswith(b"event: "):
                event = line[7:].strip().decode()
    except Exception as exc:
        watch.sse_error = f"{type(exc).__name__}: {exc}"


async def ws_read(watch: Watch) -> None:
    """Record every frame with its receive time until the run ends."""
    frames = watch.frames
    try:
        async for raw in watch.ws:
            frames.append((time.time(), raw))
            if raw.startswith('{"t": "d"'):
                continue  # a delta (the common case): parsed after the run, not here
            kind = json.loads(raw).get("t")
            if kind in END_EVENTS:
                watch.ended = kind
                return
    except Exception as exc:  # the connection closed under us: report it, don't hide it
        watch.error = f"{type(exc).__name__}: {exc}"


def ws_deltas(watch: Watch) -> list[tuple[float, int, int, str]]:
    """(received, first delta number, last, text) per frame: a WebSocket frame carries deltas
    f..s when the server merged those waiting for the socket (assistant/consumers.py)."""
    deltas = []
    for received, raw in watch.frames:
        frame = json.loads(raw)
        if frame.get("t") == "d" and frame.get("r") == watch.run_id:
            deltas.append((received, frame.get("f", frame["s"]), frame["s"], frame["x"]))
    return deltas


def sse_deltas(watch: Watch) -> list[tuple[float, int, int, str]]:
    deltas = []
    for received, event, raw in watch.sse_frames:
        if event == "delta":
            data = json.loads(raw)
            if data.get("run") == watch.run_id:
                deltas.append((received, data["seq"], data["seq"], data["text"]))
    return deltas


def analyse_watch(
    watch: Watch,
    published: int,
    saved: tuple[str, str | None] | None,
    deltas: list[tuple[float, int, int, str]],
    ended: str,
) -> dict:
    seen: set[int] = set()
    last = 0
    reordered = duplicated = 0
    delta_lat: list[float] = []
    token_lat: list[float] = []
    bad_stamps = 0
    for received, first, seq, text in deltas:
        if seq in seen:
            duplicated += 1
        elif first < last:
            reordered += 1
        seen.update(range(first, seq + 1))
        last = max(last, seq)
        try:
            stamps = [float(s) for s in text.split()]
        except ValueError:
            bad_stamps += 1
            continue
        if stamps:
            delta_lat.append(received - max(stamps))
            token_lat.extend(received - s for s in stamps)
    lost = max(0, published - len(seen))
    text = "".join(d[3] for d in deltas)
    status, saved_text = saved if saved else ("missing", None)
    return {
        "deltas": len(deltas),
        "published": published,
        "lost": lost,
        "reordered": reordered,
        "duplicated": duplicated,
        "bad_stamps": bad_stamps,
        "text_ok": saved_text is not None and saved_text == text and status == "succeeded",
        "status": status,
        "ended": ended or "timeout",
        "first_delta": (deltas[0][0] - watch.sent_at) if deltas else math.nan,
        "delta_lat": delta_lat,
        "token_lat": token_lat,
    }


async def peer_round(args, n: int, directives: str, timeout: float) -> dict:
    """The same load against a peer's OpenAI-compatible streaming endpoint (Open WebUI's
    /api/chat/completions): N requests at once, per-word latency from the stamps."""
    import aiohttp

    body = {
        "model": args.peer_model,
        "stream": True,
        "messages": [{"role": "user", "content": f"Go {directives}"}],
    }
    headers = {"Authorization": f"Bearer {args.peer_key}"} if args.peer_key else {}
    url = args.peer.rstrip("/") + args.peer_path
    ttfts: list[float] = []
    token_lat: list[float] = []
    errors = complete = 0
    pids = {"peer": args.peer_pid} if args.peer_pid else {}

    async def one(session) -> None:
        nonlocal errors, complete
        stamps: list[tuple[float, str]] = []
        started = time.time()
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                resp.raise_for_status()
                async for line in resp.content:
                    received = time.time()
                    if not line.startswith(b"data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    choices = chunk.get("choices") or []
                    content = choices[0].get("delta", {}).get("content") if choices else None
                    if content:
                        stamps.append((received, content))
        except Exception:
            errors += 1
            return
        if stamps:
            ttfts.append(stamps[0][0] - started)
        words = 0
        for received, content in stamps:
            for s in content.split():
                with contextlib.suppress(ValueError):
                    token_lat.append(received - float(s))
                    words += 1
        complete += words == args.tokens

    connector = aiohttp.TCPConnector(limit=0)
    before = cpu_mark(pids)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session:
        await asyncio.gather(*(one(session) for _ in range(n)))
    after = cpu_mark(pids)
    cpu = after.procs["peer"] - before.procs["peer"] if pids else math.nan
    wall = after.at - before.at
    ours = cpu if cpu == cpu else 0.0
    return {
        "ttft": ttfts,
        "token_lat": token_lat,
        "errors": errors,
        "complete": complete,
        "cpu": cpu,
        "wall": wall,
        "other_cores": (after.system - before.system - ours) / wall,
    }


class PgSampler:
    """Counts the bench database's PostgreSQL connections every 50 ms on a thread of its own
    (its own connection is one of them); ``peak`` is the most seen."""

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn, self.name = dsn, name
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pg-sampler", daemon=True)

    def __enter__(self) -> PgSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.name,)
                ).fetchone()
                self.peak = max(self.peak, count)
                self.stop.wait(0.05)


async def app_round(
    ctx: Context, n: int, directives: str, timeout: float, *, profile: bool = False
) -> dict:
    """N conversations, each watched by an event stream (API key) and a WebSocket (session);
    N messages POSTed over HTTP with the API key, all at once."""
    import aiohttp

    stack = ctx.stack
    convs = await asyncio.to_thread(make_conversations, ctx.team, ctx.user, n, f"N={n}")
    watches = [Watch(conversation=c) for c in convs]
    gate = asyncio.Semaphore(25)  # don't stampede Daphne's handshake path
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
    )
    use_sse, use_ws = "sse" in ctx.viewers, "ws" in ctx.viewers

    async def open_one(watch: Watch) -> None:
        async with gate:
            # A viewer the server refuses (a handshake answered 403 when the pool had no
            # connection for its session lookup, say) is counted, not fatal.
            try:
                if use_ws:
                    await ws_open(stack, watch, ctx.cookie)
                if use_sse:
                    await sse_open(session, stack, watch, ctx.key)
            except Exception as exc:
                watch.open_error = f"{type(exc).__name__}: {exc}"[:200]

    auth = {"Authorization": f"Bearer {ctx.key}"}

    async def post(watch: Watch) -> None:
        url = f"{stack.base_url}/api/v1/conversations/{watch.conversation.uuid}/messages"
        watch.sent_at = time.time()
        try:
            async with session.post(url, json={"content": f"Go {directives}"}, headers=auth) as r:
                watch.post_status = r.status
                body = await r.json(content_type=None)
                watch.post_done = time.time()
                if r.status == 202:
                    watch.run_id = body["run"]["id"]
                else:
                    watch.post_error = str(body)[:200]
        except Exception as exc:
            watch.post_error = f"{type(exc).__name__}: {exc}"

    pg = PgSampler(f"{ctx.pg_url}/{ctx.db}", ctx.db)
    try:
        await asyncio.gather(*(open_one(w) for w in watches))
        refused = [w for w in watches if w.open_error]
        watches = [w for w in watches if not w.open_error]
        readers = []
        if use_ws:
            readers += [asyncio.create_task(ws_read(w)) for w in watches]
        if use_sse:
            readers += [asyncio.create_task(sse_read(w)) for w in watches]
        await asyncio.sleep(0.5)  # presence broadcasts of the joins settle
        for w in watches:
            w.frames.clear()
            w.sse_frames.clear()
        profilers = ctx.start_profilers(f"n{n}") if profile else []
        with pg:
            before = cpu_mark(ctx.pids)
            started = time.monotonic()
            await asyncio.gather(*(post(w) for w in watches))
            sent_in = time.monotonic() - started
            # A refused POST has no run to wait for: its readers stop now.
            for w, task in zip(watches * (use_ws + use_sse), readers, strict=True):
                if not w.run_id:
                    task.cancel()
            done, pending = await asyncio.wait(readers, timeout=timeout)
            after = cpu_mark(ctx.pids)
        pending = {t for t in pending if not t.cancelled()}
        for task in pending:
            task.cancel()
        await asyncio.to_thread(ctx.stop_profilers, profilers)
    finally:
        watches += refused
        await asyncio.gather(
            *(w.ws.close() for w in watches if w.ws is not None), return_exceptions=True
        )
        for w in watches:
            if w.sse is not None:
                w.sse.close()
        await session.close()

    run_ids = [w.run_id for w in watches if w.run_id]
    saved = await asyncio.to_thread(saved_replies, run_ids)
    published = await ctx.published_seqs(run_ids)
    per: dict[str, list[dict]] = {"ws": [], "sse": []}
    for w in watches:
        if not w.run_id:
            continue
        args = (published.get(w.run_id, 0), saved.get(w.run_id))
        if use_ws:
            per["ws"].append(analyse_watch(w, *args, ws_deltas(w), w.ended or w.error))
        if use_sse:
            per["sse"].append(analyse_watch(w, *args, sse_deltas(w), w.sse_ended or w.sse_error))
    wall = after.at - before.at
    cpu = {name: after.procs[name] - before.procs[name] for name in ctx.pids}
    main = per["sse"] if use_sse else per["ws"]
    events = sum(p["published"] for p in main)
    refused = [w for w in watches if w.open_error]
    failed = [w for w in watches if w.post_status != 202 and not w.open_error]
    # Where a reply's start goes, from the event stream: POST answered, run.started seen.
    phases: dict[str, list[float]] = {"post": [], "started": []}
    for w in watches:
        if w.run_id and w.post_done:
            phases["post"].append(w.post_done - w.sent_at)
            started_at = [t for t, ev, _ in w.sse_frames if ev == "run.started"]
            if started_at:
                phases["started"].append(started_at[0] - w.sent_at)
    out = {
        "wall": wall,
        "sent_in": sent_in,
        "timeouts": len(pending),
        "failed": len(failed),
        "failed_why": sorted({f"{w.post_status} {w.post_error[:120]}" for w in failed})[:3],
        "refused": len(refused),
        "refused_why": sorted({w.open_error[:120] for w in refused})[:3],
        "pg_peak": pg.peak,
        "phases": phases,
        "events": events,
        "cpu": cpu,
        "other_cpu": (after.system - before.system) - sum(v for v in cpu.values() if v == v),
    }
    for name, rows in per.items():
        if not rows:
            continue
        out[name] = {
            "delivered": sum(p["deltas"] for p in rows),
            "lost": sum(p["lost"] for p in rows),
            "reordered": sum(p["reordered"] for p in rows),
            "duplicated": sum(p["duplicated"] for p in rows),
            "bad_stamps": sum(p["bad_stamps"] for p in rows),
            "text_ok": sum(p["text_ok"] for p in rows),
            "not_ok": [(p["status"], p["ended"]) for p in rows if not p["text_ok"]][:5],
            "first_delta": [p["first_delta"] for p in rows if not math.isnan(p["first_delta"])],
            "delta_lat": [x for p in rows for x in p["delta_lat"]],
            "token_lat": [x for p in rows for x in p["token_lat"]],
        }
    return out


@dataclass
class Context:
    stack: Stack
    user: object
    team: object
    cookie: str
    pids: dict[str, int]
    redis_url: str
    key: str  # a write API key of the bench's user, for the POSTs and the event streams
    pg_url: str
    db: str
    viewers: tuple[str, ...] = ("sse", "ws")
    profile_dir: Path | None = None
    _redis: object = None

    def start_profilers(self, tag: str) -> list[tuple[str, subprocess.Popen, Path]]:
        """py-spy on Daphne and the worker for one round (``--profile``)."""
        if self.profile_dir is None:
            return []
        spy = Path(sys.executable).with_name("py-spy")
        started = []
        for name in ("daphne", "worker"):
            out = self.profile_dir / f"{tag}-{name}.txt"
            args = [str(spy), "record", "-r", "250", "-f", "raw", "-o", str(out)]
            args += ["--nonblocking", "-p", str(self.pids[name])]
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append((name, proc, out))
        return started

    def stop_profilers(self, profilers) -> None:
        for _, proc, _ in profilers:
            proc.send_signal(signal.SIGINT)
        for name, proc, out in profilers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            if out.exists():
                summary = out.with_suffix(".top.txt")
                summary.write_text(profile_summary(out))
                print(f"  profile of {name}: {out} (summary {summary.name})", flush=True)

    async def published_seqs(self, run_ids: list[str]) -> dict[str, int]:
        """The last seq each run recorded (streams.append), kept 60 s after the run."""
        import redis.asyncio

        if self._redis is None:
            self._redis = redis.asyncio.Redis.from_url(self.redis_url)
        if not run_ids:
            return {}
        values = await self._redis.mget([f"tandem:run:{rid}:seq" for rid in run_ids])
        return {rid: int(v or 0) for rid, v in zip(run_ids, values, strict=True)}


def profile_summary(path: Path, top: int = 40) -> str:
    """Self and inclusive shares of the functions in a py-spy raw (collapsed) profile."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + int(count)
    lines = [f"{total} samples (active threads only)", "--- self"]
    for name, value in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{value / max(1, total) * 100:5.1f}% {name}")
    lines.append("--- inclusive")
    for name, value in sorted(incl.items(), key=lambda kv: -kv[1])[: top * 2]:
        lines.append(f"{value / max(1, total) * 100:5.1f}% {name}")
    return "\n".join(lines) + "\n"


def summarise(n: int, base: dict, app: dict) -> dict:
    ms = 1000
    ttft = statistics.median(base["ttft"]) if base["ttft"] else math.nan
    app_cpu = app["cpu"]["daphne"] + app["cpu"]["worker"]
    row = {
        "streams": n,
        "load1": os.getloadavg()[0],
        "base_ttft_p50": ttft * ms,
        "base_tok_p50": pct(base["token_lat"], 50) * ms,
        "base_tok_p99": pct(base["token_lat"], 99) * ms,
        "base_errors": base["errors"],
        "failed": app["failed"],
        "failed_why": app["failed_why"],
        "refused": app["refused"],
        "refused_why": app["refused_why"],
        "timeouts": app["timeouts"],
        "pg_peak": app["pg_peak"],
        "post_p50": pct(app["phases"]["post"], 50) * ms,
        "started_p50": pct(app["phases"]["started"], 50) * ms,
        "events": app["events"],
        "wall": app["wall"],
        "sent_in": app["sent_in"],
        "cpu_s": app["cpu"],
        "cpu_reply": app_cpu / n,  # web + worker, per reply
        "cpu_daphne_reply": app["cpu"]["daphne"] / n,
        "cpu_worker_reply": app["cpu"]["worker"] / n,
        "other_cores": app["other_cpu"] / app["wall"],
    }
    for v in ("sse", "ws"):
        if v not in app:
            continue
        got = app[v]
        first = [x - ttft for x in got["first_delta"]]
        row.update(
            {
                f"{v}_tok_p50": pct(got["token_lat"], 50) * ms,
                f"{v}_tok_p99": pct(got["token_lat"], 99) * ms,
                f"{v}_tok_max": pct(got["token_lat"], 100) * ms,
                f"{v}_first_p50": pct(first, 50) * ms,
                f"{v}_first_p95": pct(first, 95) * ms,
                f"{v}_first_max": pct(first, 100) * ms,
                f"{v}_delivered": got["delivered"],
                f"{v}_lost": got["lost"],
                f"{v}_reord_dup": got["reordered"] + got["duplicated"],
                f"{v}_bad_stamps": got["bad_stamps"],
                f"{v}_text_ok": got["text_ok"],
                f"{v}_not_ok": got["not_ok"],
            }
        )
    return row


def summarise_peer(n: int, base: dict, peer: dict) -> dict:
    ms = 1000
    ttft = statistics.median(base["ttft"]) if base["ttft"] else math.nan
    first = [x - ttft for x in peer["ttft"]]
    return {
        "streams": n,
        "load1": os.getloadavg()[0],
        "base_ttft_p50": ttft * ms,
        "tok_p50": pct(peer["token_lat"], 50) * ms,
        "tok_p99": pct(peer["token_lat"], 99) * ms,
        "tok_max": pct(peer["token_lat"], 100) * ms,
        "first_p50": pct(first, 50) * ms,
        "first_p95": pct(first, 95) * ms,
        "failed": peer["errors"],
        "complete": peer["complete"],
        "wall": peer["wall"],
        "cpu_reply": peer["cpu"] / n if peer["cpu"] == peer["cpu"] else math.nan,
        "other_cores": peer["other_cores"],
    }


# --- output ----------------------------------------------------------------------------------


def _f(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _trio(s: dict, keys: tuple[str, ...], digits: int = 1) -> str:
    return "/".join(_f(s.get(k, math.nan), digits) for k in keys)


LATENCY_COLS = [
    ("N", lambda s: str(s["streams"])),
    ("run", lambda s: s["label"]),
    ("SSE word p50/p99/max ms", lambda s: _trio(s, ("sse_tok_p50", "sse_tok_p99", "sse_tok_max"))),
    ("WS word p50/p99/max ms", lambda s: _trio(s, ("ws_tok_p50", "ws_tok_p99", "ws_tok_max"))),
    ("direct word p50/p99 ms", lambda s: _trio(s, ("base_tok_p50", "base_tok_p99"))),
    ("direct TTFT ms", lambda s: _f(s["base_ttft_p50"])),
    ("first word added SSE p50/p95/max ms", lambda s: _trio(
        s, ("sse_first_p50", "sse_first_p95", "sse_first_max"), 0)),
    ("WS p50 ms", lambda s: _f(s.get("ws_first_p50", math.nan), 0)),
    ("POST answered / run.started p50 ms", lambda s: _trio(s, ("post_p50", "started_p50"), 0)),
    ("load 1 min", lambda s: _f(s["load1"], 2)),
]  # fmt: skip

INTEGRITY_COLS = [
    ("N", lambda s: str(s["streams"])),
    ("run", lambda s: s["label"]),
    ("POST failed / viewers refused", lambda s: f"{s['failed']}/{s.get('refused', 0)}"),
    ("deltas pub / SSE / WS", lambda s: f"{s['events']}/{s.get('sse_delivered', '-')}/"
        f"{s.get('ws_delivered', '-')}"),
    ("lost SSE/WS", lambda s: f"{s.get('sse_lost', '-')}/{s.get('ws_lost', '-')}"),
    ("saved == streamed SSE/WS", lambda s: f"{s.get('sse_text_ok', '-')}/"
        f"{s.get('ws_text_ok', '-')} of {s.get('streams_total', s['streams'])}"),
    ("PG conns peak", lambda s: str(s["pg_peak"])),
    ("wall s", lambda s: _f(s["wall"], 2)),
    ("CPU s/reply web+worker (web/worker)", lambda s: f"{_f(s['cpu_reply'], 3)} "
        f"({_f(s['cpu_daphne_reply'], 3)}/{_f(s['cpu_worker_reply'], 3)})"),
    ("other load (cores)", lambda s: _f(s["other_cores"], 2)),
]  # fmt: skip

PEER_COLS = [
    ("N", lambda s: str(s["streams"])),
    ("run", lambda s: s["label"]),
    ("peer word p50/p99/max ms", lambda s: _trio(s, ("tok_p50", "tok_p99", "tok_max"))),
    ("peer first word added p50/p95 ms", lambda s: _trio(s, ("first_p50", "first_p95"), 0)),
    ("failed", lambda s: str(s["failed"])),
    ("complete", lambda s: str(s["complete"])),
    ("CPU s/reply", lambda s: _f(s["cpu_reply"], 3)),
    ("load 1 min", lambda s: _f(s["load1"], 2)),
]  # fmt: skip


def table(rows: list[dict], cols) -> str:
    cells = [[name for name, _ in cols]] + [[fn(r) for _, fn in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = []
    for i, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


SUM_PREFIXES = ("failed", "timeouts", "events", "sse_delivered", "ws_delivered", "sse_lost")
SUM_KEYS = {*SUM_PREFIXES, "ws_lost", "sse_reord_dup", "ws_reord_dup", "sse_text_ok"}
SUM_KEYS |= {"ws_text_ok", "sse_bad_stamps", "ws_bad_stamps", "complete", "refused"}
MAX_KEYS = {"pg_peak"}


def median_row(rows: list[dict]) -> dict:
    row: dict = {"streams": rows[0]["streams"], "label": f"median of {len(rows)}"}
    for key, value in rows[0].items():
        if key in ("streams", "label"):
            continue
        if key in SUM_KEYS:
            row[key] = sum(r.get(key, 0) for r in rows)
        elif key in MAX_KEYS:
            row[key] = max(r.get(key, 0) for r in rows)
        elif isinstance(value, (int, float)):
            row[key] = statistics.median(r.get(key, math.nan) for r in rows)
    row["streams_total"] = sum(r["streams"] for r in rows)
    return row


# (streams, figure, goal): the goals, checked on the medians.
GOALS = [
    ((1, 10), "sse_tok_p50", 2.0, "per-word p50 ≤ 2 ms"),
    ((1, 10), "ws_tok_p50", 2.0, "per-word p50 (WebSocket) ≤ 2 ms"),
    ((50,), "sse_tok_p50", 5.0, "per-word p50 ≤ 5 ms"),
    ((50,), "sse_tok_p99", 30.0, "per-word p99 ≤ 30 ms"),
    ((50,), "ws_tok_p99", 30.0, "per-word p99 (WebSocket) ≤ 30 ms"),
    ((200,), "sse_tok_p99", 250.0, "per-word p99 ≤ 250 ms"),
    ((200,), "ws_tok_p99", 250.0, "per-word p99 (WebSocket) ≤ 250 ms"),
    ((1,), "sse_first_p50", 10.0, "first word added ≤ 10 ms"),
    ((50,), "sse_first_p50", 100.0, "first word added ≤ 100 ms"),
    ((200,), "sse_first_p50", 500.0, "first word added ≤ 500 ms"),
]


def report(results: dict[int, list[dict]], peer: dict[int, list[dict]], args, extra: dict) -> bool:
    rows: list[dict] = []
    medians: dict[int, dict] = {}
    for n, runs in results.items():
        rows.extend(runs)
        medians[n] = median_row(runs) if runs else {}
        if len(runs) > 1:
            rows.append(medians[n])
    print()
    print("Per word: receive time − the provider's emit time carried in the word (SSE = the")
    print("API's event stream with an API key, WS = a browser's WebSocket); first word added =")
    print("POST sent → first word received, minus the provider's own TTFT at the same N.")
    print(table(rows, LATENCY_COLS))
    print()
    print("Integrity, connections and CPU (median rows: counts summed, PG peak the max)")
    print(table(rows, INTEGRITY_COLS))
    print()
    print(
        f"Web process: `python -m config.serve` to first answered request "
        f"{extra['startup_s']:.2f} s (goal ≤ 3 s; {extra['startup_cpu']:.2f} s of its CPU, "
        f"load {extra['startup_load']:.1f}); RSS idle {extra['rss_idle_mb']:.0f} MB "
        f"(goal ≤ 150 MB), after the runs {extra['rss_after_mb']:.0f} MB"
    )
    ok = extra["startup_s"] <= 3 and extra["rss_idle_mb"] <= 150
    for streams, key, goal, words in GOALS:
        for n in streams:
            med = medians.get(n)
            if not med or key not in med:
                continue
            met = med[key] <= goal
            ok &= met
            print(f"Goal N={n}: {words}: {med[key]:.1f} ms -> {'MET' if met else 'MISSED'}")
    for n, med in medians.items():
        if not med:
            continue
        total = med["streams_total"]
        clean = med["failed"] == 0 and med["timeouts"] == 0 and not med.get("refused")
        for v in ("sse", "ws"):
            if f"{v}_lost" in med:
                clean &= med[f"{v}_lost"] == 0 and med[f"{v}_text_ok"] == total
                clean &= med[f"{v}_reord_dup"] == 0
        if n == 200:
            ok &= clean
        print(
            f"N={n}: {'0 failed, 0 lost, saved == streamed' if clean else 'NOT CLEAN'} "
            f"({med['failed']} failed POSTs, {med.get('refused', 0)} viewers refused, "
            f"PG connections peak {med['pg_peak']})"
        )
        for r in results[n]:
            for v in ("sse", "ws"):
                if r.get(f"{v}_not_ok"):
                    print(
                        f"  N={n} run {r['label']} {v}: not ok (status, ended): {r[f'{v}_not_ok']}"
                    )
            if r["failed_why"]:
                print(f"  N={n} run {r['label']}: failed POSTs: {r['failed_why']}")
            if r.get("refused_why"):
                print(f"  N={n} run {r['label']}: viewers refused: {r['refused_why']}")
    if peer:
        prow: list[dict] = []
        pmed: dict[int, dict] = {}
        for n, runs in peer.items():
            prow.extend(runs)
            pmed[n] = median_row(runs)
            if len(runs) > 1:
                prow.append(pmed[n])
        print()
        print(f"Peer {args.peer} (same provider, same load, interleaved)")
        print(table(prow, PEER_COLS))
        print()
        print("Ratios Tandem / peer (medians; < 1 means Tandem is lower)")
        for n in sorted(pmed):
            t, p = medians.get(n, {}), pmed[n]
            if not t:
                continue

            def ratio(a: str, b: str, t: dict = t, p: dict = p) -> str:
                x, y = t.get(a, math.nan), p.get(b, math.nan)
                return "-" if not (y and y == y and x == x) else f"{x / y:.2f}"

            print(
                f"  N={n}: word p50 {ratio('sse_tok_p50', 'tok_p50')}, p99 "
                f"{ratio('sse_tok_p99', 'tok_p99')}; first word added "
                f"{ratio('sse_first_p50', 'first_p50')}; CPU per reply "
                f"{ratio('cpu_reply', 'cpu_reply')}"
            )
    return ok


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,10,50,200", help="comma-separated N values")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per reply")
    parser.add_argument("--delay-ms", type=float, default=10, help="provider delay per token")
    parser.add_argument("--first-token-ms", type=float, default=0, help="extra provider TTFT")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N (medians reported)")
    parser.add_argument(
        "--budget",
        type=float,
        default=600,
        help="seconds of measuring after which runs beyond each N's first are skipped",
    )
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="tandem_bench", help="database made and dropped here")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/13",
        help="a Redis database of its own: flushed before and after",
    )
    parser.add_argument("--coalesce-ms", type=int, help="STREAM_COALESCE_MS for the stack")
    parser.add_argument("--coalesce-above", type=int, help="STREAM_COALESCE_ABOVE for the stack")
    parser.add_argument(
        "--port-base",
        type=int,
        default=0,
        help="Daphne on this port, the fake provider on the next (default: free ports)",
    )
    parser.add_argument(
        "--viewers",
        default="sse,ws",
        help="what watches each conversation: sse (the API's event stream), ws, or both",
    )
    parser.add_argument(
        "--peer",
        help="also run the same load, interleaved, against this Open WebUI URL (or any "
        "OpenAI-compatible streaming endpoint) and print ratios",
    )
    parser.add_argument("--peer-path", default="/api/chat/completions")
    parser.add_argument("--peer-key", default="", help="the peer's API key (Bearer)")
    parser.add_argument("--peer-model", default="fake-model", help="the model name at the peer")
    parser.add_argument("--peer-pid", type=int, help="the peer's server process, for its CPU")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20,
        help="seconds to wait, at most, for other processes to go quiet before each run",
    )
    parser.add_argument(
        "--raw-llm",
        action="store_true",
        help="experiment: the worker reads the provider with a plain SSE client, not litellm "
        "(bench/rawllm_worker.py); not the production path",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy Daphne and the worker in each N's first run, into DIR"
    )
    args = parser.parse_args()
    args.stream_counts = [int(x) for x in args.streams.split(",") if x.strip()]
    args.viewer_list = tuple(v for v in args.viewers.split(",") if v in ("sse", "ws"))
    if not args.viewer_list:
        parser.error("--viewers is sse, ws or sse,ws")
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        parser.error("--profile needs py-spy in the venv: .venv/bin/pip install py-spy")
    return args


def main() -> int:
    args = parse_args()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)  # even when started with SIGINT ignored (nohup, &)

    keep_logs = args.logs is not None
    logdir = args.logs or Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    logdir.mkdir(parents=True, exist_ok=True)
    concurrency = max(args.stream_counts) + 8
    env = stack_env(args.pg_url, args.db, args.redis_url, logdir)
    env.update(
        {"LLM_MODEL": "openai/fake-model", "LLM_API_KEY": "bench-key", "LLM_MAX_RETRIES": "0"}
    )
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    if args.coalesce_ms is not None:
        env["STREAM_COALESCE_MS"] = str(args.coalesce_ms)
    if args.coalesce_above is not None:
        env["STREAM_COALESCE_ABOVE"] = str(args.coalesce_above)

    import redis

    redis_client = redis.Redis.from_url(args.redis_url)
    stack: Stack | None = None
    began = time.monotonic()
    ok = False
    try:
        print(f"Database {args.db}: create and migrate ...", flush=True)
        recreate_database(args.pg_url, args.db)
        migrate(env)
        redis_client.flushdb()
        stack = start_stack(
            env, concurrency, logdir, raw_llm=args.raw_llm, port_base=args.port_base
        )
        time.sleep(2)
        extra = {
            "startup_s": stack.startup_s,
            "startup_cpu": stack.startup_cpu,
            "startup_load": os.getloadavg()[0],
            "rss_idle_mb": proc_rss_mb(stack.procs["daphne"].pid),
        }
        django_setup(env)
        from django.conf import settings

        user, team = make_user_and_team()
        cookie = session_cookie(user)
        key = api_key(user, team)
        pids = {
            "daphne": stack.procs["daphne"].pid,
            "worker": stack.procs["worker"].pid,
            "fakellm": stack.procs["fakellm"].pid,
            "bench": os.getpid(),
        }
        redis_pid = find_pid("redis-server")
        if redis_pid:
            pids["redis"] = redis_pid
        ctx = Context(
            stack, user, team, cookie, pids, args.redis_url, key, args.pg_url, args.db,
            args.viewer_list, args.profile,
        )  # fmt: skip
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        directives = f"[[tokens={args.tokens} delay_ms={args.delay_ms:g} stamp=1"
        if args.first_token_ms:
            directives += f" first_token_ms={args.first_token_ms:g}"
        directives += "]]"
        print(
            f"Stack up in {logdir}: Daphne :{stack.web_port}, worker --pool threads "
            f"--concurrency {concurrency}, fake LLM :{stack.llm_port}; "
            f"{args.tokens} tokens at {args.delay_ms:g} ms, STREAM_COALESCE_MS="
            f"{settings.STREAM_COALESCE_MS}, {os.cpu_count()} cores"
            + ("; EXPERIMENT --raw-llm: no litellm in the worker" if args.raw_llm else ""),
            flush=True,
        )
        _use_uvloop()
        results, peer = asyncio.run(run_all(ctx, args, directives))
        extra["rss_after_mb"] = proc_rss_mb(stack.procs["daphne"].pid)
        ok = report(results, peer, args, extra)
        if args.json:
            args.json.write_text(
                json.dumps(_jsonable(results, peer, extra, args, settings), indent=1)
            )
            print(f"Figures written to {args.json}")
    except KeyboardInterrupt as exc:
        print(f"\nInterrupted ({exc}); cleaning up.", file=sys.stderr)
    except Exception:
        keep_logs = True
        print(f"Logs kept in {logdir}", file=sys.stderr)
        if stack is not None:
            for name in ("fakellm", "daphne", "worker"):
                print(f"--- {name} log ---\n{stack.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        if stack is not None:
            stack.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with contextlib.suppress(Exception):
            recreate_database(args.pg_url, args.db, drop_only=True)
        with contextlib.suppress(Exception):
            redis_client.flushdb()
        if not keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
        print(f"Done in {time.monotonic() - began:.0f} s; processes stopped, {args.db} dropped.")
    return 0 if ok else 1


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_all(ctx: Context, args, directives: str):
    """Pass after pass over the N values (so each N gets runs spread over time), --repeat
    passes; a run after the first pass is skipped when it would overrun --budget. With
    --peer, each run of Tandem is followed by the same load on the peer."""
    per_stream_s = args.tokens * args.delay_ms / 1000 + args.first_token_ms / 1000
    timeout = 120 + per_stream_s * 10
    # Warm-up, not reported: the worker's first LLM call sets up litellm and its clients.
    await app_round(ctx, 4, "[[tokens=5 delay_ms=5]]", timeout=60)
    began = time.monotonic()
    results: dict[int, list[dict]] = {n: [] for n in args.stream_counts}
    peer: dict[int, list[dict]] = {n: [] for n in args.stream_counts} if args.peer else {}
    if args.peer:  # its first request may load things too
        await peer_round(args, 2, "[[tokens=5 delay_ms=5]]", timeout=60)
    took: dict[int, float] = {}
    for rep in range(args.repeat):
        for n in args.stream_counts:
            if rep and time.monotonic() - began + took[n] > args.budget:
                print(f"N={n} run {rep + 1}: skipped, it would overrun --budget", flush=True)
                continue
            round_began = time.monotonic()
            quiet = await wait_for_quiet(ctx.pids, args.quiet_wait)
            if quiet >= 0.3:
                print(f"  (other processes use {quiet:.2f} cores; measuring anyway)", flush=True)
            base = await baseline(ctx.stack.llm_url, n, directives, timeout)
            await asyncio.sleep(0.5)
            app = await app_round(ctx, n, directives, timeout, profile=rep == 0)
            row = summarise(n, base, app)
            row["label"] = f"{rep + 1}"
            results[n].append(row)
            print(
                f"N={n} run {rep + 1}: word p50/p99 SSE {_f(row.get('sse_tok_p50', math.nan))}/"
                f"{_f(row.get('sse_tok_p99', math.nan))} ms, WS "
                f"{_f(row.get('ws_tok_p50', math.nan))}/{_f(row.get('ws_tok_p99', math.nan))} ms; "
                f"first word +{_f(row.get('sse_first_p50', math.nan), 0)} ms; failed "
                f"{row['failed']}; lost {row.get('sse_lost', '-')}/{row.get('ws_lost', '-')}; "
                f"CPU/reply {row['cpu_reply']:.3f} s; PG peak {row['pg_peak']}; "
                f"{row['wall']:.1f} s; load {row['load1']:.2f}",
                flush=True,
            )
            await asyncio.sleep(1.0)  # let the last runs' bookkeeping finish
            if args.peer:
                await wait_for_quiet(ctx.pids, args.quiet_wait)
                prow = summarise_peer(n, base, await peer_round(args, n, directives, timeout))
                prow["label"] = f"{rep + 1}"
                peer[n].append(prow)
                print(
                    f"N={n} run {rep + 1} peer: word p50/p99 {_f(prow['tok_p50'])}/"
                    f"{_f(prow['tok_p99'])} ms; first word +{_f(prow['first_p50'], 0)} ms; "
                    f"failed {prow['failed']}; CPU/reply {_f(prow['cpu_reply'], 3)} s",
                    flush=True,
                )
                await asyncio.sleep(1.0)
            took[n] = time.monotonic() - round_began
    return results, peer


def _jsonable(results, peer, extra, args, settings) -> dict:
    return {
        "peer": {str(n): runs for n, runs in peer.items()},
        "web": extra,
        "args": {k: str(v) for k, v in vars(args).items()},
        "coalesce_ms": settings.STREAM_COALESCE_MS,
        "cores": os.cpu_count(),
        "results": {str(n): runs for n, runs in results.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
