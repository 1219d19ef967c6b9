#!/usr/bin/env python
"""Faults on the scaled-out topology, measured.

    .venv/bin/python bench/cluster.py [--streams 50] [--tokens 300] [--delay-ms 40]
        [--faults worker,web,redis,redis-end,postgres] [--port 8500] [--json FILE]

What runs (all on this machine, started and always stopped here): a PostgreSQL cluster of its
own (initdb into a temporary folder, port --pg-port, 5442 by default: the fault restarts it, so
never the machine's shared one), a redis-server of its own (--redis-port, 6391), and the
cluster of deploy/cluster.py on it: nginx on --port, two Daphnes on the next two ports, two
Celery workers, beat. The model is the demo model (the scripted fake provider, inside each
worker), scripted with ``[[tokens=T delay_ms=D]]`` so the whole reply is known in advance.

Each fault is one phase: --streams fresh conversations, each watched by two WebSocket viewers,
one connected straight to each Daphne (so both Daphnes serve viewers of every conversation),
and one conversation also read through the API's event stream (SSE, via nginx). All messages
are sent at once through the API (via nginx); once every viewer has text, the fault is
injected:

- ``worker``: kill -9 of the worker executing the most runs. Its runs must end (failed, with
  the text already streamed saved, and Retry offered) within a bounded time; the other
  worker's runs complete. Recovery: kill -> the last of its runs' ``run.failed`` reaching a
  viewer.
- ``web``: kill -9 of the first Daphne. Its viewers reconnect through nginx (to the other one;
  the supervisor restarts the killed one after a second) and resync by seq. Recovery: kill ->
  the last of its viewers synced again.
- ``redis``: Redis shut down (nothing kept) and started again a second later. Recovery: start
  -> every viewer of a run still in flight has a delta again (or its run's end).
- ``redis-end``: the same, as the replies end (once a viewer has 90% of its text): most runs'
  end events are published while Redis is down, or before the Daphnes subscribed again, so a
  socket that stayed open learns of its run's end only from the sync the Daphne sends it once
  its channel layer is back (events.LayerWatch). Every viewer must still be told.
- ``postgres``: PostgreSQL stopped for --pg-outage seconds and started again, while a prober
  GETs an API page through nginx every 100 ms: during the outage the answers must be 503,
  quickly; after it, 200 again by themselves. Recovery: start -> the first 200.

A viewer behaves as the browser's client (static/js/conversation.js): a delta numbered one past
what it has is appended; at or below, dropped; beyond, a gap: it asks for a resync and takes
the snapshot when its number is higher. On a closed socket it reconnects (250 ms doubling, at
most 5 s) through nginx; a run in flight before that the sync no longer lists ended while it was
away, and is read from the database as the browser re-fetches it.

A run's end event carries its saved message, rendered, which the browser shows in place of the
streamed text: a viewer whose streamed text was short at that moment (deltas lost with Redis
and no later one to reveal the gap) is counted apart from "lost" for that reason.

Figures per phase: the runs' end states; saved messages that differ from what streamed, or are
missing or doubled; per viewer and run, whether the text it showed when the run ended equals
the saved message (lost = it showed less, dup = it showed something else); deltas seen twice
on the wire and gaps resynced; processes the supervisor had to start again (a worker must
survive a Redis restart by itself); the time to recovery. And the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

END_EVENTS = ("run.completed", "run.failed", "run.cancelled")


def load_deploy_cluster():
    """deploy/cluster.py, by path (this file is "cluster" too when run as a script)."""
    path = ROOT / "deploy" / "cluster.py"
    spec = importlib.util.spec_from_file_location("tandem_deploy_cluster", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


# --- services of our own -----------------------------------------------------------------------


@dataclass
class OwnRedis:
    """A redis-server of our own that keeps nothing on disk: a restart loses everything."""

    port: int
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if port_open(self.port):
            raise RuntimeError(f"Port {self.port} is taken: Redis for the cluster needs it.")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "10000",
            ],  # fmt: skip
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: port_open(self.port), 10, "redis-server listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a clean shutdown; with --save "" it saves nothing
            self.proc.wait(10)
        self.proc = None


@dataclass
class OwnPostgres:
    """A throwaway PostgreSQL cluster (initdb into a temporary folder, run as the postgres
    user): the fault restarts it, never the machine's shared server."""

    port: int
    base: Path

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def _as_postgres(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(prefix + args, capture_output=True, text=True, **kwargs)

    def _bin(self, name: str) -> str:
        found = shutil.which(name)
        if found:
            return found
        for version in ("17", "16", "15"):
            path = f"/usr/lib/postgresql/{version}/bin/{name}"
            if os.access(path, os.X_OK):
                return path
        raise RuntimeError(f"{name} (PostgreSQL's server programs) is not installed.")

    def init(self) -> None:
        if port_open(self.port):
            raise RuntimeError(f"Port {self.port} is taken: the bench's PostgreSQL needs it.")
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        result = self._as_postgres(
            [self._bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"],
            timeout=120,
        )
        if result.returncode:
            raise RuntimeError("initdb failed:\n" + result.stdout[-1000:] + result.stderr[-2000:])
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\nmax_connections = 300\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        self.start()

    def start(self) -> None:
        result = self._as_postgres(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.base / "pg.log"),
                "-w",
                "start",
            ],  # fmt: skip
            timeout=60,
        )
        if result.returncode:
            raise RuntimeError("pg_ctl start failed:\n" + result.stdout + result.stderr)

    def stop(self) -> None:
        self._as_postgres(
            [self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], timeout=60
        )

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


# --- the viewers -----------------------------------------------------------------------------


@dataclass
class RunView:
    seq: int = 0
    text: str = ""
    wire_dups: int = 0  # deltas at or below what it had (dropped, as the browser does)
    gaps: int = 0  # deltas beyond: a resync was asked for
    ended: str = ""  # the end event, or "away" (ended while disconnected), or ""
    ended_at: float = 0.0
    text_at_end: str = ""
    seq_at_end: int = 0
    end_rendered: bool = False  # the end event carried the saved message, rendered
    last_delta_at: float = 0.0


@dataclass
class Viewer:
    """One browser-like WebSocket client of a conversation (static/js/conversation.js)."""

    conversation: str
    first_port: int
    nginx_port: int
    cookie: str
    origin: str
    runs: dict[str, RunView] = field(default_factory=dict)
    connects: list[tuple[float, int]] = field(default_factory=list)  # (synced at, port)
    closes: list[float] = field(default_factory=list)
    port: int = 0
    ws: Any = None
    resync_pending: bool = False
    synced: bool = False  # this socket had its first sync: a later one is a resync
    error: str = ""

    def run_view(self, run_id: str) -> RunView:
        return self.runs.setdefault(run_id, RunView())

    async def run(self, stop: asyncio.Event) -> None:
        import websockets

        port, attempts = self.first_port, 0
        while not stop.is_set():
            self.port = port
            try:
                async with websockets.connect(
                    f"ws://127.0.0.1:{port}/ws/conversations/{self.conversation}/",
                    additional_headers={"Origin": self.origin, "Cookie": self.cookie},
                    open_timeout=30,
                    ping_interval=None,
                    compression=None,
                    max_queue=None,
                ) as ws:
                    self.ws = ws
                    self.resync_pending = False
                    self.synced = False
                    stop_task = asyncio.ensure_future(stop.wait())
                    try:
                        while True:
                            recv = asyncio.ensure_future(ws.recv())
                            done, _ = await asyncio.wait(
                                {recv, stop_task}, return_when=asyncio.FIRST_COMPLETED
                            )
                            if stop_task in done:
                                recv.cancel()
                                return
                            self.handle(json.loads(recv.result()), port)
                            attempts = 0
                    finally:
                        stop_task.cancel()
            except Exception as exc:  # closed under us, refused: reconnect as the browser does
                self.error = f"{type(exc).__name__}: {exc}"
            self.ws = None
            self.closes.append(time.time())
            if stop.is_set():
                return
            await asyncio.sleep(min(5.0, 0.25 * 2**attempts))
            attempts += 1
            port = self.nginx_port  # a reconnect goes through nginx, to whichever Daphne is up

    def handle(self, frame: dict, port: int) -> None:
        kind = frame.get("t")
        now = time.time()
        if kind == "d":
            view = self.run_view(frame["r"])
            if view.ended:
                return
            seq = frame["s"]
            view.last_delta_at = now
            if frame.get("f", seq) == view.seq + 1:  # deltas f..s (merged under load)
                view.text += frame["x"]
                view.seq = seq
            elif seq <= view.seq:
                view.wire_dups += 1
            else:
                view.gaps += 1
                self.request_resync()
        elif kind == "sync":
            self.resync_pending = False
            # On a socket already synced: asked for (a gap) or sent by the server after the
            # channel layer lost Redis (events.LayerWatch); else the first after (re)connecting.
            how = "resync" if self.synced else "away"
            self.synced = True
            listed = set()
            for snap in frame["runs"]:
                listed.add(snap["run"])
                view = self.run_view(snap["run"])
                if not view.ended and snap["seq"] > view.seq:
                    view.text, view.seq = snap["text"], snap["seq"]
            if how == "away":
                self.connects.append((now, port))
            # In flight before, not listed now: it ended while we were away, or its end event
            # was lost (the browser re-fetches such a run; the bench reads it from the database
            # afterwards).
            for run_id, view in self.runs.items():
                if run_id not in listed and not view.ended and view.seq > 0:
                    self.end(view, how, now)
        elif kind in END_EVENTS:
            view = self.run_view(frame["run"])
            if not view.ended:
                self.end(view, kind, now)
                # The browser swaps the streamed text for this (the saved message, rendered).
                view.end_rendered = bool(frame.get("html") and frame.get("message_id"))

    @staticmethod
    def end(view: RunView, how: str, now: float) -> None:
        view.ended, view.ended_at = how, now
        view.text_at_end, view.seq_at_end = view.text, view.seq

    def request_resync(self) -> None:
        if self.resync_pending or self.ws is None:
            return
        self.resync_pending = True
        asyncio.ensure_future(self.ws.send(json.dumps({"t": "resync"})))


@dataclass
class SseReader:
    """The API's event stream of one conversation, reconnecting with Last-Event-ID."""

    url: str
    key: str
    last_id: str = ""
    resets: int = 0
    reconnects: int = 0
    events: int = 0
    resumed: int = 0  # reconnects answered without a reset
    error: str = ""

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            first = True
            while not stop.is_set():
                headers = {"Authorization": f"Bearer {self.key}"}
                if self.last_id:
                    headers["Last-Event-ID"] = self.last_id
                reset_seen = False
                try:
                    async with session.get(self.url, headers=headers) as resp:
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status}")
                        kind = ""
                        got_any = False
                        async for raw in resp.content:
                            if stop.is_set():
                                return
                            line = raw.decode().rstrip("\n")
                            if line.startswith("event: "):
                                kind = line[7:]
                            elif line.startswith("id: "):
                                self.last_id = line[4:]
                            elif line == "" and kind:
                                self.events += 1
                                if kind == "reset":
                                    self.resets += 1
                                    reset_seen = True
                                if not first and not got_any and kind != "reset":
                                    self.resumed += 1
                                got_any = True
                                kind = ""
                except Exception as exc:
                    self.error = f"{type(exc).__name__}: {exc}"
                del reset_seen
                if stop.is_set():
                    return
                first = False
                self.reconnects += 1
                await asyncio.sleep(0.5)


# --- the harness ---------------------------------------------------------------------------------


@dataclass
class Harness:
    """What a phase needs: the cluster, the services it may restart, a member's credentials.
    ORM calls are made from this process (Django set up on the cluster's database)."""

    cluster: Any
    redis_url: str
    user: Any
    team: Any
    cookie: str
    api_key: str
    restart_redis: Any = None  # callable(outage seconds) -> (stopped at, started at)
    restart_postgres: Any = None  # callable(outage seconds) -> (stopped at, started at)
    pg_outage: float = 5.0

    @property
    def nginx_port(self) -> int:
        return self.cluster.port


def make_member():
    """A member, their team, a session cookie and an API key (ORM, sync)."""
    from django.conf import settings
    from django.test import Client

    from accounts.models import Membership, User
    from accounts.services import team_create
    from api.models import Scope
    from api.services import apikey_create

    suffix = os.urandom(4).hex()
    user = User.objects.create_user(email=f"cluster-{suffix}@example.com", password=None)
    team = team_create(name=f"Cluster {suffix}", slug=f"cluster-{suffix}", owner=user)
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    membership = Membership.objects.get(team=team, user=user)
    key = apikey_create(membership=membership, name="bench", scope=Scope.WRITE).raw
    return user, team, cookie, key


def _make_conversations(team, user, count: int, label: str) -> list[str]:
    from django.db import connection

    from assistant.models import Conversation

    objs = [
        Conversation(team=team, created_by=user, title=f"{label} #{i}", title_is_custom=True)
        for i in range(count)
    ]
    try:
        return [str(c.uuid) for c in Conversation.objects.bulk_create(objs)]
    finally:
        connection.close()


async def _send(session, origin: str, key: str, conversation_id: str, content: str) -> str:
    """Send the message as a client does (the API, through nginx): the Daphne that takes it
    queues the run on the cluster's broker."""
    async with session.post(
        f"{origin}/api/v1/conversations/{conversation_id}/messages",
        json={"content": content},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        body = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"sending a message: HTTP {resp.status} {body}")
        return body["run"]["id"]


def _outcome(run_ids: list[str]) -> dict[str, dict]:
    from django.db import connection

    from assistant.models import Message, Run

    try:
        runs = {str(r.uuid): r for r in Run.objects.filter(uuid__in=run_ids)}
        messages: dict[str, list[str]] = {}
        for run_uuid, content in Message.objects.filter(run__uuid__in=run_ids).values_list(
            "run__uuid", "content"
        ):
            messages.setdefault(str(run_uuid), []).append(content)
        return {
            rid: {
                "status": runs[rid].status,
                "error": runs[rid].error,
                "worker": runs[rid].worker,
                "messages": messages.get(rid, []),
            }
            for rid in run_ids
            if rid in runs
        }
    finally:
        connection.close()


def _runs_by_worker(run_ids: list[str]) -> dict[str, list[str]]:
    from django.db import connection

    from assistant.models import Run, RunStatus

    try:
        found: dict[str, list[str]] = {}
        for uuid, worker in Run.objects.filter(
            uuid__in=run_ids, status=RunStatus.RUNNING
        ).values_list("uuid", "worker"):
            found.setdefault(worker, []).append(str(uuid))
        return found
    finally:
        connection.close()


def expected_text(tokens: int) -> str:
    from assistant.fakellm.script import scripted_tokens

    return "".join(scripted_tokens(tokens))


async def probe(url: str, headers: dict, stop: asyncio.Event, out: list) -> None:
    """GET url every 100 ms: (sent at, status or 0 for no answer, seconds taken)."""
    loop = asyncio.get_running_loop()

    def once() -> tuple[float, int, float]:
        started = time.time()
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=30) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except Exception:
            status = 0
        return started, status, time.time() - started

    with ThreadPoolExecutor(4) as pool:
        while not stop.is_set():
            out.append(await loop.run_in_executor(pool, once))
            await asyncio.sleep(0.1)


async def run_phase(
    h: Harness, fault: str, *, streams: int, tokens: int, delay_ms: float, timeout: float = 120
) -> dict:
    loop = asyncio.get_running_loop()
    db = ThreadPoolExecutor(8)
    call = lambda fn, *a: loop.run_in_executor(db, fn, *a)  # noqa: E731
    conversations = await call(_make_conversations, h.team, h.user, streams, fault)
    web_ports = h.cluster.web_ports()
    origin = h.cluster.url
    viewers = [
        Viewer(conv, port, h.nginx_port, h.cookie, origin)
        for conv in conversations
        for port in web_ports
    ]
    stop = asyncio.Event()
    tasks = []
    # Ten handshakes at a time: a hundred at once on a busy machine take longer than a
    # browser's patience, and the retries pile up.
    for start in range(0, len(viewers), 10):
        chunk = viewers[start : start + 10]
        tasks += [asyncio.ensure_future(v.run(stop)) for v in chunk]
        await asyncio_wait_until(lambda c=chunk: all(v.connects for v in c), 120, "viewers in")
    sse = SseReader(f"{origin}/api/v1/conversations/{conversations[0]}/events", h.api_key)
    tasks.append(asyncio.ensure_future(sse.run(stop)))
    content = f"[[tokens={tokens} delay_ms={delay_ms}]] Stream for the {fault} fault."
    import aiohttp

    sent_at = time.time()
    async with aiohttp.ClientSession() as session:
        run_ids: list[str] = list(
            await asyncio.gather(
                *(_send(session, origin, h.api_key, conv, content) for conv in conversations)
            )
        )
    by_conv = dict(zip(conversations, run_ids, strict=True))

    def streaming() -> bool:
        return all(v.runs.get(by_conv[v.conversation], RunView()).seq >= 3 for v in viewers)

    await asyncio_wait_until(streaming, 90, "every viewer has text")
    info: dict[str, Any] = {"fault": fault, "streams": streams, "load": load_average()}
    probes: list[tuple[float, int, float]] = []
    probe_stop = asyncio.Event()
    starts_before = {name: proc.starts for name, proc in h.cluster.procs.items()}
    fault_at = time.time()
    affected_runs: list[str] = []
    affected_viewers: list[Viewer] = []
    if fault == "worker":
        by_worker = await call(_runs_by_worker, run_ids)
        victim = max((w for w in by_worker if w), key=lambda w: len(by_worker[w]))
        pid = int(victim.split("@")[0].rsplit(":", 1)[1])  # host:pid@redis-tag
        name = next(n for n, p in h.cluster.procs.items() if p.popen and p.popen.pid == pid)
        fault_at = time.time()
        os.kill(pid, signal.SIGKILL)
        affected_runs = by_worker[victim]
        info["killed"] = f"{name} (pid {pid}), executing {len(affected_runs)} run(s)"
    elif fault == "web":
        fault_at = time.time()
        pid = h.cluster.kill("web1")
        affected_viewers = [v for v in viewers if v.port == web_ports[0]]
        info["killed"] = f"web1 (pid {pid}), serving {len(affected_viewers)} viewer(s)"
    elif fault in ("redis", "redis-end"):
        if fault == "redis-end":
            # As the replies end: the first viewer has 90% of its text, so most runs' end
            # events are published while Redis is down or before the Daphnes subscribed again.
            near_end = 0.9 * len(expected_text(tokens))
            await asyncio_wait_until(
                lambda: any(len(r.text) >= near_end for v in viewers for r in v.runs.values()),
                90,
                "a reply near its end",
            )
        stopped, started = await loop.run_in_executor(None, h.restart_redis, 1.0)
        fault_at = started
        info["outage_s"] = round(started - stopped, 2)
    elif fault == "postgres":
        headers = {"Authorization": f"Bearer {h.api_key}"}
        prober = asyncio.ensure_future(
            probe(f"{origin}/api/v1/conversations?team={h.team.slug}", headers, probe_stop, probes)
        )
        await asyncio.sleep(1.0)
        stopped, started = await loop.run_in_executor(None, h.restart_postgres, h.pg_outage)
        fault_at = started
        info["outage_s"] = round(started - stopped, 2)
        await asyncio.sleep(0)
    # Every viewer's run ends (in its eyes), and every run ends in the database.
    finished = ("succeeded", "failed", "cancelled")
    deadline = time.monotonic() + timeout
    outcome: dict[str, dict] = {}
    while time.monotonic() < deadline:
        try:
            outcome = await call(_outcome, run_ids)
        except Exception:  # the database is what is restarting
            await asyncio.sleep(0.5)
            continue
        viewers_done = all(v.runs.get(by_conv[v.conversation], RunView()).ended for v in viewers)
        if viewers_done and all(o["status"] in finished for o in outcome.values()):
            break
        await asyncio.sleep(0.5)
    ended_at = time.time()
    if fault == "postgres":
        # Probing on until the first 200 after the restart (the streams may end before).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            p[0] >= fault_at and p[1] == 200 for p in probes
        ):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        probe_stop.set()
        await prober
    if fault in ("redis", "redis-end"):
        await asyncio.sleep(3)  # a worker that would exit does so once its replies are done
    # Processes the supervisor had to start again (besides the one killed on purpose).
    info["restarted"] = sorted(
        name for name, proc in h.cluster.procs.items() if proc.starts > starts_before[name]
    )
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    db.shutdown(wait=False)
    outcome = await loop.run_in_executor(None, _outcome, run_ids)
    full = expected_text(tokens)

    # Saved messages against the script and against what streamed.
    statuses: dict[str, int] = {}
    saved_wrong = missing = doubled = 0
    for rid in run_ids:
        o = outcome.get(rid, {"status": "?", "messages": []})
        statuses[o["status"]] = statuses.get(o["status"], 0) + 1
        texts = o["messages"]
        doubled += max(0, len(texts) - 1)
        if o["status"] == "succeeded":
            if not texts:
                missing += 1
            elif texts[0] != full:
                saved_wrong += 1
        elif o["status"] == "failed" and texts and not full.startswith(texts[0]):
            saved_wrong += 1
    # Each viewer's text when its run ended against the saved message.
    lost = dup = hung = ok = away = resynced = replaced = 0
    wire_dups = gaps = 0
    untold = []
    for v in viewers:
        rid = by_conv[v.conversation]
        view = v.runs.get(rid, RunView())
        wire_dups += view.wire_dups
        gaps += view.gaps
        saved = (outcome.get(rid, {}).get("messages") or [""])[0]
        if not view.ended:
            hung += 1
            untold.append(
                f"viewer on :{v.port} of run {rid[:8]} ({outcome.get(rid, {}).get('status')}): "
                f"seq {view.seq}, last delta {view.last_delta_at - fault_at:+.1f} s, "
                f"{len(v.connects)} sync(s), {len(v.closes)} close(s) {v.error}"
            )
        elif view.ended == "away":
            # Ended while it reconnected: the browser re-fetches such a run (refreshRun), so
            # it shows the saved message; counted apart, since no streamed text is compared.
            away += 1
        elif view.ended == "resync":
            # Its end event was lost with Redis; a later sync no longer listed it (re-fetched).
            resynced += 1
        elif view.text_at_end == saved:
            ok += 1
        elif saved.startswith(view.text_at_end) and view.end_rendered:
            # Deltas lost with Redis and no later one to show the gap, but the end event
            # brought the saved message, which the browser shows instead: counted apart.
            replaced += 1
        elif saved.startswith(view.text_at_end):
            lost += 1
        else:
            dup += 1
    info.update(
        {
            "runs": statuses,
            "saved_wrong": saved_wrong,
            "messages_missing": missing,
            "messages_doubled": doubled,
            "viewer_runs": len(viewers),
            "viewer_text_ok": ok,
            "viewer_ended_while_away": away,
            "viewer_end_by_resync": resynced,
            "viewer_short_then_saved_shown": replaced,
            "viewer_text_lost": lost,
            "viewer_text_dup": dup,
            "viewer_not_told": hung,
            **({"not_told": untold} if untold else {}),
            "wire_dups_dropped": wire_dups,
            "gaps_resynced": gaps,
            "sse": {
                "error": sse.error,
                "events": sse.events,
                "reconnects": sse.reconnects,
                "resumed": sse.resumed,
                "resets": sse.resets,
            },
            "phase_s": round(ended_at - sent_at, 1),
        }
    )
    if fault == "worker":
        ends = [
            v.runs[by_conv[v.conversation]].ended_at
            for v in viewers
            if by_conv[v.conversation] in affected_runs and v.runs[by_conv[v.conversation]].ended
        ]
        failed = [outcome[r]["status"] for r in affected_runs]
        info["killed_runs_failed"] = failed.count("failed")
        info["killed_runs_error"] = sorted({outcome[r]["error"] for r in affected_runs})
        info["recovery_s"] = round(max(ends) - fault_at, 2) if ends else None
    elif fault == "web":
        back = [
            min((t for t, _ in v.connects if t > fault_at), default=None) for v in affected_viewers
        ]
        info["reconnected"] = sum(t is not None for t in back)
        info["recovery_s"] = (
            round(max(t for t in back if t) - fault_at, 2) if all(back) and back else None
        )
    elif fault in ("redis", "redis-end"):
        # Every viewer whose run was still streaming at the restart gets text again (or the end).
        waits = []
        for v in viewers:
            view = v.runs[by_conv[v.conversation]]
            if view.ended and view.ended_at < fault_at:
                continue
            again = view.ended_at if view.ended else None
            if view.last_delta_at > fault_at:
                again = min(x for x in (again, view.last_delta_at) if x) if again else None
            waits.append((again or ended_at) - fault_at)
        info["recovery_s"] = round(max(waits), 2) if waits else 0.0
    elif fault == "postgres":
        during = [p for p in probes if fault_at - info["outage_s"] <= p[0] < fault_at]
        after = [p for p in probes if p[0] >= fault_at]
        first_ok = next((p[0] + p[2] for p in after if p[1] == 200), None)
        # (sent at, status, seconds) relative to the restart: what waited, what failed fast.
        info["probes"] = [
            (round(p[0] - fault_at, 1), p[1], round(p[2], 2))
            for p in probes
            if fault_at - info["outage_s"] - 6 <= p[0] <= (first_ok or p[0])
        ]
        statuses_during: dict[str, int] = {}
        for p in during:
            statuses_during[str(p[1])] = statuses_during.get(str(p[1]), 0) + 1
        info["probes_during_outage"] = statuses_during
        info["slowest_answer_during_outage_s"] = round(max((p[2] for p in during), default=0), 2)
        info["recovery_s"] = round(first_ok - fault_at, 2) if first_ok else None
        info["probes_after"] = len(after)
    return info


async def asyncio_wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.1)


def print_phase(info: dict) -> None:
    print(f"\n== {info['fault']}: {info['streams']} streams (load {info['load']})", flush=True)
    for key, value in info.items():
        if key not in ("fault", "streams", "load"):
            print(f"  {key}: {value}", flush=True)


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--delay-ms", type=float, default=40)
    parser.add_argument("--faults", default="worker,web,redis,redis-end,postgres")
    parser.add_argument("--port", type=int, default=8500, help="nginx; Daphnes on the next two")
    parser.add_argument("--redis-port", type=int, default=6391)
    parser.add_argument("--pg-port", type=int, default=5442)
    parser.add_argument("--pg-outage", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    args = parser.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(faults) - {"worker", "web", "redis", "redis-end", "postgres"}
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    deploy = load_deploy_cluster()
    if deploy.nginx_binary() is None:
        print(deploy.NGINX_MISSING, file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="tandem-bench-cluster-"))
    work.chmod(0o755)  # PostgreSQL runs as its own user under it
    redis = OwnRedis(args.redis_port, work / "redis.log")
    pg = OwnPostgres(args.pg_port, work / "pg")
    cluster = None
    results = []
    try:
        redis.start()
        pg.init()
        pg.create_database("tandem_bench_cluster")
        env = deploy.default_env(args.port)
        env.update(
            {
                "DATABASE_URL": pg.url("tandem_bench_cluster"),
                "REDIS_URL": redis.url,
                "TANDEM_DATA_DIR": str(work / "data"),
                "SITE_URL": f"http://127.0.0.1:{args.port}",
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "DATABASE_POOL_SIZE": "20",
                # The bench sends and probes far more than a person does.
                "API_RATE_PER_MINUTE": "0",
                "API_KEY_RATE_PER_MINUTE": "0",
            }
        )
        for name in ("LLM_MODEL", "LLM_API_BASE", "LLM_API_KEY"):
            env.pop(name, None)  # the demo model
        cluster = deploy.Cluster(
            dir=work / "cluster", env=env, port=args.port, concurrency=max(50, args.streams)
        )
        print(f"Starting the cluster (logs in {work})…", flush=True)
        cluster.start()
        print(f"Cluster at {cluster.url}", flush=True)
        os.environ.update(env)
        import django

        django.setup()
        user, team, cookie, key = make_member()

        def restart_redis(outage: float) -> tuple[float, float]:
            stopped = time.time()
            redis.stop()
            time.sleep(outage)
            started = time.time()
            redis.start()
            return stopped, started

        def restart_postgres(outage: float) -> tuple[float, float]:
            stopped = time.time()
            pg.stop()
            time.sleep(outage)
            started = time.time()
            pg.start()
            return stopped, started

        h = Harness(
            cluster, redis.url, user, team, cookie, key, restart_redis, restart_postgres,
            args.pg_outage,
        )  # fmt: skip
        print(f"Machine load before: {load_average()}", flush=True)
        for fault in faults:
            info = asyncio.run(
                run_phase(
                    h, fault, streams=args.streams, tokens=args.tokens, delay_ms=args.delay_ms
                )
            )
            results.append(info)
            print_phase(info)
            # The supervisor restarted what was killed: wait for it before the next phase.
            for proc in cluster.procs.values():
                with contextlib.suppress(Exception):
                    cluster.wait_ready(proc, timeout=90)
            time.sleep(3)
    finally:
        if cluster is not None:
            cluster.stop()
        redis.stop()
        with contextlib.suppress(Exception):
            pg.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"Logs kept in {work}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
