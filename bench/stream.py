#!/usr/bin/env python
"""Streaming benchmark on the production topology.

    .venv/bin/python bench/stream.py [--streams 1,50,200] [--tokens 100] [--delay-ms 30]
        [--repeat 3] [--budget 240] [--coalesce-ms MS] [--json FILE] [--profile DIR] [--raw-llm]

See docs/benchmarks.md for what it measured on the project's machines.

What runs (all on this machine, as subprocesses this script starts and always stops):
the fake LLM provider (``manage.py fakellm``), one Daphne process (``python -m config.serve``,
uvloop), one Celery worker (``--pool threads``, concurrency >= streams), against the local
PostgreSQL (a database of its own, ``tandem_bench``, created, migrated and dropped here) and
Redis (a database number of its own, db 13 by default, flushed before and after).

Up to --repeat passes over the N values in --streams (a run after the first pass is skipped
when it would overrun --budget seconds); each run, after waiting (at most --quiet-wait seconds)
for other processes on the machine to go quiet:

1. Baseline: N concurrent streaming requests straight to the fake provider over HTTP (aiohttp),
   same directives; measures the provider's own time to first token and the per-token latency
   of the raw provider stream (receive time - the token's emit stamp).
2. The app: N fresh conversations, each watched by its own WebSocket (session cookie of a user
   made with the ORM, ``force_login``). All N runs start at once: ``message_send`` is called for
   every conversation from a pool of threads in this process (the same service the compose view
   calls), which commits the message and run, publishes ``message.created`` and enqueues the run
   on Celery. Every delta received on every WebSocket is timestamped.

The fake provider is scripted with ``[[tokens=T delay_ms=D stamp=1]]``: each token is the
provider's ``time.time()`` when it wrote it, so a delta's text says when its tokens left the
provider. Figures:

- delta added latency: receive time - emit time of the delta's LAST token (the earliest the
  delta could have been sent);
- token latency: receive time - emit time of every token (includes the coalescing window);
- first delta: receive time of the first delta - the time ``message_send`` was called, minus
  the provider's own median TTFT from the baseline of the same N;
- lost (gaps in seq, counted against the seq the worker recorded in Redis), reordered and
  duplicated deltas; whether the saved message equals the concatenation of the received text;
- CPU time (utime + stime from /proc/<pid>/stat) of Daphne, the worker, the provider, Redis and
  this process over the window from the first send to the last run end, and per delta event.
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
import time
from concurrent.futures import ThreadPoolExecutor
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


# --- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    env: dict[str, str]
    web_port: int
    llm_port: int
    logdir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

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
    env: dict[str, str], concurrency: int, logdir: Path, *, raw_llm: bool = False
) -> Stack:
    stack = Stack(env=env, web_port=free_port(), llm_port=free_port(), logdir=logdir)
    env["LLM_API_BASE"] = f"http://127.0.0.1:{stack.llm_port}/v1"
    env["SITE_URL"] = stack.base_url
    py = sys.executable
    try:
        llm = stack.spawn("fakellm", [py, "manage.py", "fakellm", "--port", str(stack.llm_port)])
        web = stack.spawn(
            "daphne", [py, "-m", "config.serve", "-b", "127.0.0.1", "-p", str(stack.web_port)]
        )
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
        wait_for_port(stack.web_port, web, "Daphne")
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


def analyse_watch(watch: Watch, published: int, saved: tuple[str, str | None] | None) -> dict:
    deltas = []
    for received, raw in watch.frames:
        frame = json.loads(raw)
        if frame.get("t") == "d" and frame.get("r") == watch.run_id:
            deltas.append((received, frame["s"], frame["x"]))
    seen: set[int] = set()
    last = 0
    reordered = duplicated = 0
    delta_lat: list[float] = []
    token_lat: list[float] = []
    bad_stamps = 0
    for received, seq, text in deltas:
        if seq in seen:
            duplicated += 1
        elif seq < last:
            reordered += 1
        seen.add(seq)
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
    text = "".join(d[2] for d in deltas)
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
        "ended": watch.ended or watch.error or "timeout",
        "first_delta": (deltas[0][0] - watch.sent_at) if deltas else math.nan,
        "delta_lat": delta_lat,
        "token_lat": token_lat,
    }


async def app_round(
    ctx: Context, n: int, directives: str, timeout: float, *, profile: bool = False
) -> dict:
    """N conversations, N WebSockets, N runs started at once."""
    from assistant.services import message_send

    stack = ctx.stack
    convs = await asyncio.to_thread(make_conversations, ctx.team, ctx.user, n, f"N={n}")
    watches = [Watch(conversation=c) for c in convs]
    gate = asyncio.Semaphore(25)  # don't stampede Daphne's handshake path

    async def open_one(watch: Watch) -> None:
        async with gate:
            await ws_open(stack, watch, ctx.cookie)

    try:
        await asyncio.gather(*(open_one(w) for w in watches))
        readers = [asyncio.create_task(ws_read(w)) for w in watches]
        await asyncio.sleep(0.5)  # presence broadcasts of the joins settle
        for w in watches:
            w.frames.clear()
        profilers = ctx.start_profilers(f"n{n}") if profile else []
        before = cpu_mark(ctx.pids)
        started = time.monotonic()

        def send(watch: Watch) -> None:
            watch.sent_at = time.time()
            from django.db import connection

            try:
                sent = message_send(
                    conversation=watch.conversation, author=ctx.user, content=f"Go {directives}"
                )
            finally:
                connection.close()  # back to the process's pool (16 senders, a pool of 10)
            watch.run_id = str(sent.run.uuid)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(ctx.senders, send, w) for w in watches))
        sent_in = time.monotonic() - started
        done, pending = await asyncio.wait(readers, timeout=timeout)
        after = cpu_mark(ctx.pids)
        for task in pending:
            task.cancel()
        await asyncio.to_thread(ctx.stop_profilers, profilers)
    finally:
        await asyncio.gather(
            *(w.ws.close() for w in watches if w.ws is not None), return_exceptions=True
        )

    run_ids = [w.run_id for w in watches if w.run_id]
    saved = await asyncio.to_thread(saved_replies, run_ids)
    published = await ctx.published_seqs(run_ids)
    per = [analyse_watch(w, published.get(w.run_id, 0), saved.get(w.run_id)) for w in watches]
    wall = after.at - before.at
    cpu = {name: after.procs[name] - before.procs[name] for name in ctx.pids}
    events = sum(p["published"] for p in per)
    delivered = sum(p["deltas"] for p in per)
    return {
        "wall": wall,
        "sent_in": sent_in,
        "timeouts": len(pending),
        "events": events,
        "delivered": delivered,
        "lost": sum(p["lost"] for p in per),
        "reordered": sum(p["reordered"] for p in per),
        "duplicated": sum(p["duplicated"] for p in per),
        "bad_stamps": sum(p["bad_stamps"] for p in per),
        "text_ok": sum(p["text_ok"] for p in per),
        "not_ok": [
            (w.run_id, p["status"], p["ended"])
            for w, p in zip(watches, per, strict=True)
            if not p["text_ok"]
        ][:5],
        "first_delta": [p["first_delta"] for p in per if not math.isnan(p["first_delta"])],
        "delta_lat": [x for p in per for x in p["delta_lat"]],
        "token_lat": [x for p in per for x in p["token_lat"]],
        "cpu": cpu,
        "other_cpu": (after.system - before.system) - sum(v for v in cpu.values() if v == v),
    }


@dataclass
class Context:
    stack: Stack
    user: object
    team: object
    cookie: str
    pids: dict[str, int]
    redis_url: str
    senders: ThreadPoolExecutor
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
    first = [x - ttft for x in app["first_delta"]]
    events = max(1, app["events"])
    return {
        "streams": n,
        "base_ttft_p50": ttft * ms,
        "base_tok_p50": pct(base["token_lat"], 50) * ms,
        "base_tok_p99": pct(base["token_lat"], 99) * ms,
        "base_tok_max": pct(base["token_lat"], 100) * ms,
        "base_errors": base["errors"],
        "delta_p50": pct(app["delta_lat"], 50) * ms,
        "delta_p95": pct(app["delta_lat"], 95) * ms,
        "delta_p99": pct(app["delta_lat"], 99) * ms,
        "delta_max": pct(app["delta_lat"], 100) * ms,
        "tok_p50": pct(app["token_lat"], 50) * ms,
        "tok_p95": pct(app["token_lat"], 95) * ms,
        "tok_p99": pct(app["token_lat"], 99) * ms,
        "tok_max": pct(app["token_lat"], 100) * ms,
        "first_p50": pct(first, 50) * ms,
        "first_p95": pct(first, 95) * ms,
        "first_max": pct(first, 100) * ms,
        "events": app["events"],
        "delivered": app["delivered"],
        "lost": app["lost"],
        "reordered": app["reordered"],
        "duplicated": app["duplicated"],
        "bad_stamps": app["bad_stamps"],
        "text_ok": app["text_ok"],
        "timeouts": app["timeouts"],
        "not_ok": app["not_ok"],
        "wall": app["wall"],
        "sent_in": app["sent_in"],
        "cpu_s": app["cpu"],
        "daphne_ms_ev": app["cpu"]["daphne"] * ms / events,
        "worker_ms_ev": app["cpu"]["worker"] * ms / events,
        "all_ms_ev": sum(v for v in app["cpu"].values() if v == v) * ms / events,
        "daphne_pct": app["cpu"]["daphne"] / app["wall"] * 100,
        "worker_pct": app["cpu"]["worker"] / app["wall"] * 100,
        "other_cores": app["other_cpu"] / app["wall"],
    }


# --- output ----------------------------------------------------------------------------------


def _f(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


LATENCY_COLS = [
    ("N", lambda s: str(s["streams"])),
    ("run", lambda s: s["label"]),
    ("delta added p50/p95/p99/max ms", lambda s: "/".join(
        _f(s[k]) for k in ("delta_p50", "delta_p95", "delta_p99", "delta_max"))),
    ("token p50/p95/p99/max ms", lambda s: "/".join(
        _f(s[k]) for k in ("tok_p50", "tok_p95", "tok_p99", "tok_max"))),
    ("provider direct token p50/p99/max ms", lambda s: "/".join(
        _f(s[k]) for k in ("base_tok_p50", "base_tok_p99", "base_tok_max"))),
    ("provider TTFT p50 ms", lambda s: _f(s["base_ttft_p50"])),
    ("first delta − TTFT p50/p95/max ms", lambda s: "/".join(
        _f(s[k], 0) for k in ("first_p50", "first_p95", "first_max"))),
]  # fmt: skip

INTEGRITY_COLS = [
    ("N", lambda s: str(s["streams"])),
    ("run", lambda s: s["label"]),
    ("deltas pub/recv", lambda s: f"{s['events']}/{s['delivered']}"),
    ("lost", lambda s: str(s["lost"])),
    ("reord/dup", lambda s: f"{s['reordered']}/{s['duplicated']}"),
    ("saved == received", lambda s: f"{s['text_ok']}/{s.get('streams_total', s['streams'])}"),
    ("wall s", lambda s: _f(s["wall"], 2)),
    ("Daphne CPU s (%)", lambda s: f"{_f(s['cpu_s']['daphne'], 2)} ({_f(s['daphne_pct'], 0)}%)"),
    ("worker CPU s (%)", lambda s: f"{_f(s['cpu_s']['worker'], 2)} ({_f(s['worker_pct'], 0)}%)"),
    ("ms CPU/event Daphne/worker/all", lambda s: "/".join(
        _f(s[k], 2) for k in ("daphne_ms_ev", "worker_ms_ev", "all_ms_ev"))),
    ("provider/redis/bench CPU s", lambda s: "/".join(
        _f(s["cpu_s"].get(k, math.nan), 2) for k in ("fakellm", "redis", "bench"))),
    ("other load (cores)", lambda s: _f(s["other_cores"], 2)),
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


MEDIAN_KEYS = [
    *("base_ttft_p50", "base_tok_p50", "base_tok_p99", "base_tok_max"),
    *("delta_p50", "delta_p95", "delta_p99", "delta_max"),
    *("tok_p50", "tok_p95", "tok_p99", "tok_max", "first_p50", "first_p95", "first_max"),
    *("wall", "daphne_ms_ev", "worker_ms_ev", "all_ms_ev", "daphne_pct", "worker_pct"),
    "other_cores",
]
SUM_KEYS = ["events", "delivered", "lost", "reordered", "duplicated", "bad_stamps", "text_ok"]
SUM_KEYS += ["timeouts"]


def median_row(rows: list[dict]) -> dict:
    row = {"streams": rows[0]["streams"], "label": f"median of {len(rows)}"}
    for key in MEDIAN_KEYS:
        row[key] = statistics.median(r[key] for r in rows)
    for key in SUM_KEYS:
        row[key] = sum(r[key] for r in rows)
    row["cpu_s"] = {k: statistics.median(r["cpu_s"][k] for r in rows) for k in rows[0]["cpu_s"]}
    row["streams_total"] = sum(r["streams"] for r in rows)
    return row


def report(results: dict[int, list[dict]], args) -> bool:
    rows: list[dict] = []
    for runs in results.values():
        rows.extend(runs)
        if len(runs) > 1:
            rows.append(median_row(runs))
    integrity_rows = [
        {**r, "label": r["label"].replace("median", "sum/median")} if "streams_total" in r else r
        for r in rows
    ]
    print()
    print("Latency (ms; delta = receive − emit of the delta's last token; token = receive − emit")
    print("of every token; first delta = send → first delta − provider's own TTFT)")
    print(table(rows, LATENCY_COLS))
    print()
    print("Integrity and CPU (sum/median rows: counts are sums over the runs, the rest medians)")
    print(table(integrity_rows, INTEGRITY_COLS))
    print()
    ok = True
    if 50 in results:
        med = median_row(results[50])
        met = med["delta_p50"] <= 10 and med["delta_p99"] <= 50
        ok &= met
        print(
            f"Goal 50 streams, added per delta p50 ≤ 10 ms and p99 ≤ 50 ms: "
            f"p50 {med['delta_p50']:.1f} ms, p99 {med['delta_p99']:.1f} ms -> "
            f"{'MET' if met else 'MISSED'}"
        )
    for n in sorted(results):
        runs = results[n]
        clean = all(
            r["lost"] == 0
            and r["reordered"] == 0
            and r["duplicated"] == 0
            and r["text_ok"] == r["streams"]
            and r["timeouts"] == 0
            for r in runs
        )
        if n == 200:
            ok &= clean
            print(
                f"Goal 200 streams finish with nothing lost: "
                f"{'MET' if clean else 'MISSED'} (lost {sum(r['lost'] for r in runs)}, "
                f"finished and saved == received {sum(r['text_ok'] for r in runs)}/"
                f"{sum(r['streams'] for r in runs)})"
            )
        for r in runs:
            if r["not_ok"]:
                print(f"  N={n} {r['label']}: not ok (run, status, ended): {r['not_ok']}")
    return ok


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,50,200", help="comma-separated N values")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per reply")
    parser.add_argument("--delay-ms", type=float, default=30, help="provider delay per token")
    parser.add_argument("--first-token-ms", type=float, default=0, help="extra provider TTFT")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N (medians reported)")
    parser.add_argument(
        "--budget",
        type=float,
        default=240,
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
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"{args.pg_url}/{args.db}",
        "REDIS_URL": args.redis_url,
        "RUN_EXECUTOR": "celery",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "LLM_MODEL": "openai/fake-model",
        "LLM_API_KEY": "bench-key",
        "LLM_MAX_RETRIES": "0",
        "TANDEM_DATA_DIR": str(logdir / "data"),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    if args.coalesce_ms is not None:
        env["STREAM_COALESCE_MS"] = str(args.coalesce_ms)

    import redis

    redis_client = redis.Redis.from_url(args.redis_url)
    stack: Stack | None = None
    senders = ThreadPoolExecutor(max_workers=16, thread_name_prefix="send")
    began = time.monotonic()
    ok = False
    try:
        print(f"Database {args.db}: create and migrate ...", flush=True)
        recreate_database(args.pg_url, args.db)
        migrate(env)
        redis_client.flushdb()
        stack = start_stack(env, concurrency, logdir, raw_llm=args.raw_llm)
        django_setup(env)
        from django.conf import settings

        user, team = make_user_and_team()
        cookie = session_cookie(user)
        pids = {
            "daphne": stack.procs["daphne"].pid,
            "worker": stack.procs["worker"].pid,
            "fakellm": stack.procs["fakellm"].pid,
            "bench": os.getpid(),
        }
        redis_pid = find_pid("redis-server")
        if redis_pid:
            pids["redis"] = redis_pid
        ctx = Context(stack, user, team, cookie, pids, args.redis_url, senders, args.profile)
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
        results = asyncio.run(run_all(ctx, args, directives))
        ok = report(results, args)
        if args.json:
            args.json.write_text(json.dumps(_jsonable(results, args, settings), indent=1))
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
        senders.shutdown(wait=False, cancel_futures=True)
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


async def run_all(ctx: Context, args, directives: str) -> dict[int, list[dict]]:
    """Pass after pass over the N values (so each N gets runs spread over time), --repeat
    passes; a run after the first pass is skipped when it would overrun --budget."""
    per_stream_s = args.tokens * args.delay_ms / 1000 + args.first_token_ms / 1000
    timeout = 120 + per_stream_s * 10
    # Warm-up, not reported: the worker's first LLM call sets up litellm and its clients.
    await app_round(ctx, 4, "[[tokens=5 delay_ms=5]]", timeout=60)
    began = time.monotonic()
    results: dict[int, list[dict]] = {n: [] for n in args.stream_counts}
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
                f"N={n} run {rep + 1}: delta p50 {row['delta_p50']:.1f} ms, p99 "
                f"{row['delta_p99']:.1f} ms; lost {row['lost']}; saved == received "
                f"{row['text_ok']}/{n}; {row['wall']:.1f} s",
                flush=True,
            )
            await asyncio.sleep(1.0)  # let the last runs' bookkeeping finish
            took[n] = time.monotonic() - round_began
    return results


def _jsonable(results, args, settings) -> dict:
    return {
        "args": {k: str(v) for k, v in vars(args).items()},
        "coalesce_ms": settings.STREAM_COALESCE_MS,
        "cores": os.cpu_count(),
        "results": {str(n): runs for n, runs in results.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
