#!/usr/bin/env python
"""`make cluster`: the scaled-out topology on this machine, supervised.

    .venv/bin/python deploy/cluster.py [--port 8500] [--webs 2] [--workers 2]
        [--concurrency 200] [--dir DIR] [--no-restart] [--no-migrate]

Starts nginx (the Debian package's binary, with a configuration of its own written to --dir)
in front of --webs Daphne processes (round robin, no sticky sessions, WebSocket upgrade), --workers
Celery workers (thread pool) and one beat, against DATABASE_URL (each process through its own
connection pool, config/db.py) and REDIS_URL. Ports: nginx on --port, the Daphnes on the next
ones (8501, 8502 by default). The model is LLM_MODEL when set, else the demo model (the scripted
fake provider, inside each worker). Prints the URL; Ctrl-C (or SIGTERM) stops everything.

A process that dies is started again after RESTART_DELAY seconds, as systemd or Kubernetes would
(--no-restart: left dead). ``DIR/cluster.json`` always names the live processes and their pids:
bench/cluster.py and tests/test_cluster.py read it to kill one (and import ``Cluster`` to run
the whole thing themselves).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESTART_DELAY = 1.0
PR_SET_PDEATHSIG = 1

NGINX_CONF = """\
# Written by deploy/cluster.py: nginx in front of the cluster's Daphne processes.
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log {dir}/nginx-access.log;
    client_body_temp_path {dir}/nginx-tmp/body;
    proxy_temp_path {dir}/nginx-tmp/proxy;
    fastcgi_temp_path {dir}/nginx-tmp/fastcgi;
    uwsgi_temp_path {dir}/nginx-tmp/uwsgi;
    scgi_temp_path {dir}/nginx-tmp/scgi;
    upstream tandem_web {{
{servers}
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 2m;
        location / {{
            proxy_pass http://tandem_web;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # Replies stream for minutes; SSE must not sit in nginx's buffer.
            proxy_read_timeout 3600s;
            proxy_buffering off;
            # A Daphne that is down (killed, restarting) is skipped for the other within the
            # same request: its refused connection costs nothing. Never marked down for a while
            # (max_fails=0 above): with one marked, the 50 viewers reconnecting at once reset a
            # few handshakes of the other, nginx marked that one down too, and answered 502
            # ("no live upstreams") to everyone for seconds at a time (bench/cluster.py).
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502;
        }}
    }}
}}
"""


def _die_with_parent() -> None:
    # The children get SIGTERM if the supervisor dies without stopping them (kill -9, say).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


NGINX_MISSING = (
    "nginx is not installed: install the Debian package (apt-get install nginx, or run "
    "scripts/install_test_deps.py as root)."
)


@dataclass
class Proc:
    name: str
    args: list[str]
    port: int | None = None  # listens here once ready
    ready_word: str = ""  # or: says this in its log once ready
    popen: subprocess.Popen | None = None
    starts: int = 0
    log_offset: int = 0  # where the current start's lines begin in its log


@dataclass
class Cluster:
    """The processes, their logs under ``dir`` and a supervisor thread restarting the dead."""

    dir: Path
    env: dict[str, str]
    port: int = 8500
    webs: int = 2
    workers: int = 2
    concurrency: int = 200
    restart: bool = True
    procs: dict[str, Proc] = field(default_factory=dict)
    stopping: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def web_ports(self) -> list[int]:
        return [self.port + 1 + i for i in range(self.webs)]

    # --- set-up ---------------------------------------------------------------------------
    def prepare(self, *, migrate: bool = True) -> None:
        if nginx_binary() is None:
            raise RuntimeError(NGINX_MISSING)
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
        busy = [p for p in [self.port, *self.web_ports()] if port_open(p)]
        if busy:
            raise RuntimeError(f"Port(s) {', '.join(map(str, busy))} already in use.")
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in self.web_ports())
        # As root, nginx's worker would drop to "nobody", who may not write under --dir.
        user = "user root;" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(
            NGINX_CONF.format(dir=self.dir, port=self.port, servers=servers, user=user)
        )
        if migrate:
            result = subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
                cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if result.returncode:
                raise RuntimeError("migrate failed:\n" + result.stderr[-3000:])
        py = sys.executable
        nginx = nginx_binary()
        assert nginx is not None
        self.procs["nginx"] = Proc(
            "nginx", [nginx, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)], self.port
        )
        for i, port in enumerate(self.web_ports(), 1):
            self.procs[f"web{i}"] = Proc(
                f"web{i}", [py, "-m", "config.serve", "-b", "127.0.0.1", "-p", str(port)], port
            )
        for i in range(1, self.workers + 1):
            self.procs[f"worker{i}"] = Proc(
                f"worker{i}",
                [
                    py,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "-n",
                    f"worker{i}@%h",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(self.concurrency),
                    "--prefetch-multiplier",
                    "1",
                    "--loglevel",
                    "INFO",
                    "--without-gossip",
                    "--without-mingle",
                ],  # fmt: skip
                ready_word="ready.",
            )
        self.procs["beat"] = Proc(
            "beat",
            [
                py,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(self.dir / "celerybeat-schedule"),
            ],  # fmt: skip
            ready_word="beat: Starting",
        )

    # --- processes ------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _spawn(self, proc: Proc) -> None:
        log = self.log_path(proc.name).open("a")
        proc.log_offset = log.tell()
        log.write(f"--- start #{proc.starts + 1} at {time.strftime('%H:%M:%S')}\n")
        log.flush()
        proc.popen = subprocess.Popen(
            proc.args,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops them in order
            preexec_fn=_die_with_parent,
        )
        log.close()
        proc.starts += 1

    def wait_ready(self, proc: Proc, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        assert proc.popen is not None
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode}:\n{self.log_tail(proc.name)}"
                )
            if proc.port is not None and port_open(proc.port):
                return
            if proc.ready_word:
                text = self.log_path(proc.name).read_text(errors="replace")
                if proc.ready_word in text[proc.log_offset :]:
                    return
            time.sleep(0.1)
        raise RuntimeError(
            f"{proc.name} not ready within {timeout:.0f} s:\n{self.log_tail(proc.name)}"
        )

    def start(self, *, migrate: bool = True) -> None:
        self.prepare(migrate=migrate)
        try:
            order = [p for p in self.procs.values() if p.name != "nginx"] + [self.procs["nginx"]]
            for proc in order:
                self._spawn(proc)
            for proc in order:
                self.wait_ready(proc)
        except BaseException:
            self.stop()
            raise
        self.write_state()
        threading.Thread(target=self._supervise, name="cluster-supervisor", daemon=True).start()

    def pid(self, name: str) -> int:
        popen = self.procs[name].popen
        assert popen is not None
        return popen.pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal one process (kill -9 by default); the supervisor restarts it if it dies."""
        pid = self.pid(name)
        os.kill(pid, sig)
        return pid

    def restart_now(self, name: str) -> None:
        """Start a dead process at once (the supervisor would after RESTART_DELAY)."""
        with self.lock:
            proc = self.procs[name]
            if proc.popen is not None and proc.popen.poll() is None:
                return
            self._spawn(proc)
            self.write_state()
        self.wait_ready(proc)

    def write_state(self) -> None:
        state = {
            "url": self.url,
            "processes": {
                name: {"pid": p.popen.pid, "port": p.port, "starts": p.starts}
                for name, p in self.procs.items()
                if p.popen is not None and p.popen.poll() is None
            },
        }
        (self.dir / "cluster.json").write_text(json.dumps(state, indent=2))

    def _supervise(self) -> None:
        while not self.stopping:
            time.sleep(0.2)
            for proc in list(self.procs.values()):
                if self.stopping or proc.popen is None or proc.popen.poll() is None:
                    continue
                code = proc.popen.returncode
                if not self.restart:
                    continue
                print(f"cluster: {proc.name} exited ({code}); starting it again", flush=True)
                time.sleep(RESTART_DELAY)
                with self.lock:
                    if self.stopping or proc.popen.poll() is None:
                        continue
                    self._spawn(proc)
                    self.write_state()

    def stop(self) -> None:
        """SIGTERM to every process (nginx first: no new requests), then SIGKILL after 15 s."""
        self.stopping = True
        with self.lock:
            order = ["nginx"] + [n for n in self.procs if n != "nginx"]
            running = [
                self.procs[n].popen
                for n in order
                if n in self.procs and self.procs[n].popen is not None
            ]
            for popen in running:
                assert popen is not None
                if popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        popen.terminate()
            deadline = time.monotonic() + 15
            for popen in running:
                assert popen is not None
                try:
                    popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait(5)


def default_env(port: int) -> dict[str, str]:
    """Production mode against local services, as scripts/prod_local.sh; what is set wins."""
    env = dict(os.environ)
    env.setdefault("TANDEM_MODE", "production")
    env.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tandem_local")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
    env.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
    env.setdefault("SITE_URL", f"http://127.0.0.1:{port}")
    env.setdefault("SECURE_SSL_REDIRECT", "0")
    env.setdefault("SECURE_COOKIES", "0")
    # nginx is the one proxy whose X-Forwarded-For is believed.
    env.setdefault("TRUSTED_PROXIES", "127.0.0.1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not env.get("SECRET_KEY"):
        key_file = ROOT / ".tandem" / "prod_secret_key"
        key_file.parent.mkdir(exist_ok=True)
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(50) + "\n")
        env["SECRET_KEY"] = key_file.read_text().strip()
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("CLUSTER_PORT", 8500)))
    parser.add_argument("--webs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="logs, nginx.conf, cluster.json")
    parser.add_argument("--no-restart", action="store_true")
    parser.add_argument("--no-migrate", action="store_true")
    args = parser.parse_args(argv)
    if nginx_binary() is None:
        print(NGINX_MISSING, file=sys.stderr)
        return 1
    env = default_env(args.port)
    if not args.no_migrate:
        subprocess.run(
            [sys.executable, "scripts/ensure_database.py"], cwd=ROOT, env=env, check=True
        )
    run_dir = args.dir or Path(tempfile.mkdtemp(prefix="tandem-cluster-"))
    cluster = Cluster(
        dir=run_dir.resolve(),
        env=env,
        port=args.port,
        webs=args.webs,
        workers=args.workers,
        concurrency=args.concurrency,
        restart=not args.no_restart,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        cluster.start(migrate=not args.no_migrate)
    except RuntimeError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    pids = ", ".join(f"{n} {p.popen.pid}" for n, p in cluster.procs.items() if p.popen)
    print(f"Tandem cluster at {cluster.url}  (Ctrl-C stops it)", flush=True)
    print(f"  processes: {pids}", flush=True)
    print(f"  logs and state: {cluster.dir}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("cluster: stopping…", flush=True)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
