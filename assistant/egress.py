"""Registry-only egress for setup scripts (and, where a team allows it, approved commands).

The sandbox keeps its own network namespace with nothing but loopback. What it may reach goes
through three pieces:

1. **The proxy**: proxy.py (a maintained proxy library) with :mod:`assistant.egress_plugin`,
   which admits CONNECT and plain HTTP to the hosts in ``SANDBOX_EGRESS_ALLOW`` alone and never
   to a non-public address (unless ``SANDBOX_EGRESS_ALLOW_PRIVATE``, for tests). One per worker
   process, started lazily at the first call that needs it (:func:`proxy_socket`), listening
   on a Unix socket in a directory only the worker's user can enter. The web process never
   starts one: only the agent's code (in the worker) calls this module.
2. **A channel per call** (:func:`channel`): a Unix socket of its own in a fresh directory,
   bound into that call's sandbox at ``/run/tandem-egress``, relaying each connection to the
   proxy; closed and deleted when the call ends. A sandbox sees no other call's socket and
   can't use its own after it ended. The relay reads the first line each way, so the hosts a
   call asked for and those refused are known in words (:class:`Traffic`).
3. **A forwarder inside the sandbox** (:data:`FORWARDER`): a few lines of Python (the image's
   ``python3``, standard library only) listening on ``127.0.0.1:PORT`` and relaying to the
   socket, then running the command with ``HTTP(S)_PROXY``, pip's and npm's proxy variables
   pointing at it. An image without ``python3`` gets no forwarder: :func:`forwarder_missing`
   says so, and setup runs with no network at all (its output starts with that sentence).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SANDBOX_DIR = "/run/tandem-egress"  # where a call's channel directory is bound in the sandbox
SOCKET_NAME = "proxy.sock"
PORT = 3128  # the forwarder's port on the sandbox's own loopback
START_SECONDS = 20.0

# Runs in the sandbox as `python3 -I -S -c FORWARDER PORT SOCKET -- command...`: binds the port
# before the command starts (no race), forks a relay, and execs the command in its place. The
# relay dies with the sandbox's PID namespace when the command ends.
FORWARDER = r"""
import os, socket, sys, threading
port, path, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[4:]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
if os.fork():
    srv.close()
    os.execvp(cmd[0], cmd)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    client, _ = srv.accept()
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        continue
    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
"""


def proxy_env(port: int = PORT) -> dict[str, str]:
    """The variables that send pip, npm, curl, apt and most HTTP clients through the forwarder."""
    url = f"http://127.0.0.1:{port}"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "PIP_PROXY": url,
        "npm_config_proxy": url,
        "npm_config_https_proxy": url,
        "NO_PROXY": "",
        "no_proxy": "",
    }


def wrap(argv: list[str], port: int = PORT) -> list[str]:
    """``argv`` run behind the in-sandbox forwarder."""
    return ["python3", "-I", "-S", "-c", FORWARDER, str(port), f"{SANDBOX_DIR}/{SOCKET_NAME}",
            "--", *argv]  # fmt: skip


def forwarder_missing(system_root: Path) -> str:
    """Why the forwarder can't run in this image ("" when it can)."""
    for candidate in ("usr/bin/python3", "usr/local/bin/python3"):
        if os.path.lexists(system_root / candidate):
            return ""
    return (
        "The sandbox image has no python3, which the egress forwarder needs: setup runs "
        "without network (add python3 to the image to let it reach the package registries)."
    )


# --- The proxy process (one per worker process) --------------------------------------------------


class _Proxy:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.pid = 0  # the worker process that started it (a forked child must start its own)
        self.dir: Path | None = None
        self.key: tuple = ()

    def socket_path(self) -> Path:
        from django.conf import settings

        key = (tuple(settings.SANDBOX_EGRESS_ALLOW), settings.SANDBOX_EGRESS_ALLOW_PRIVATE)
        with self.lock:
            alive = self.proc is not None and self.proc.poll() is None
            if alive and self.pid == os.getpid() and self.key == key and self.dir is not None:
                return self.dir / SOCKET_NAME
            self._stop()
            self._start(key)
            assert self.dir is not None
            return self.dir / SOCKET_NAME

    def _start(self, key: tuple) -> None:
        from django.conf import settings

        allow, private = key
        self.dir = Path(tempfile.mkdtemp(prefix="tandem-egress-"))  # 0700: the worker's alone
        path = self.dir / SOCKET_NAME
        argv = [
            sys.executable, "-m", "proxy",
            "--unix-socket-path", str(path),
            "--plugins", "assistant.egress_plugin.AllowlistPlugin",
            "--tandem-allow", ",".join(allow),
            "--threaded", "--num-acceptors", "1",
            "--log-level", "WARNING",
        ]  # fmt: skip
        if private:
            argv.append("--tandem-allow-private")
        # Nothing of the server's environment (keys, database URL) goes to the proxy.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(settings.BASE_DIR),
        }
        self.proc = subprocess.Popen(
            argv,
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid, self.key = os.getpid(), key
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode()[-500:]
                raise EgressError(f"the egress proxy exited at start: {err.strip()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
                log.info("egress proxy started (pid %s) for %s", self.proc.pid, ",".join(allow))
                return
            time.sleep(0.05)
        self._stop()
        raise EgressError(f"the egress proxy did not start within {START_SECONDS:g} s")

    def _stop(self) -> None:
        if self.proc is not None and self.pid == os.getpid():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def stop(self) -> None:
        with self.lock:
            self._stop()


class EgressError(Exception):
    """The proxy could not be started; the message says why."""


_proxy = _Proxy()
atexit.register(_proxy.stop)


def proxy_socket() -> Path:
    """The worker's proxy socket, starting the proxy if it isn't running in this process."""
    return _proxy.socket_path()


def stop_proxy() -> None:
    _proxy.stop()


# --- A channel per call ----------------------------------------------------------------------


@dataclass
class Traffic:
    """What one call asked the proxy for: "host:port" in order, and the refusals in words."""

    asked: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def refusals_sentence(self) -> str:
        if not self.refused:
            return ""
        return "The egress proxy refused " + "; ".join(dict.fromkeys(self.refused)) + "."


def _channels_root() -> Path:
    """Where calls' channel directories are made: searchable (not listable) by the sandbox's
    uid, which bwrap runs as when the server is root and must reach the directory it binds."""
    root = Path(tempfile.gettempdir()) / f"tandem-egress-channels-{os.getuid()}"
    root.mkdir(mode=0o711, exist_ok=True)
    st = root.lstat()
    if st.st_uid != os.getuid() or not root.is_dir() or root.is_symlink():
        raise EgressError(f"{root} is not this server's own directory")
    root.chmod(0o711)
    return root


@contextlib.asynccontextmanager
async def channel() -> AsyncIterator[tuple[Path, Traffic]]:
    """A call's own socket (in the directory yielded, to bind at :data:`SANDBOX_DIR`) relaying
    to the worker's proxy, open for the duration of the ``async with``."""
    upstream = await asyncio.to_thread(proxy_socket)
    folder = Path(tempfile.mkdtemp(prefix="call-", dir=_channels_root()))
    folder.chmod(0o711)  # a random name under a directory nobody can list
    traffic = Traffic()
    tasks: set[asyncio.Task] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(upstream))
        except OSError:
            writer.close()
            return
        asked = ""

        async def first_line(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> bytes:
            line = await src.readline()
            dst.write(line)
            await dst.drain()
            return line

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                dst.write_eof() if dst.can_write_eof() else dst.close()

        try:
            request = await first_line(reader, up_writer)
            parts = request.decode("latin-1").split()
            if len(parts) >= 2:
                asked = _target(parts[0], parts[1])
                traffic.asked.append(asked)
            upward = asyncio.ensure_future(pump(reader, up_writer))
            response = await first_line(up_reader, writer)
            status = response.decode("latin-1").split(" ", 2)
            if (
                len(status) >= 2
                and status[1] == "403"
                and "Tandem egress" in response.decode("latin-1")
            ):
                reason = status[2].strip() if len(status) > 2 else ""
                traffic.refused.append(reason.split(": ", 1)[-1] or asked)
            await asyncio.gather(upward, pump(up_reader, writer))
        except (OSError, ConnectionError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    server = await asyncio.start_unix_server(serve, path=str(folder / SOCKET_NAME))
    # The sandbox's uid connects; no one else can reach it (the folder's name is random, under
    # a directory nobody can list).
    os.chmod(folder / SOCKET_NAME, 0o666)  # noqa: S103
    try:
        yield folder, traffic
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        shutil.rmtree(folder, ignore_errors=True)


def _target(method: str, target: str) -> str:
    if method.upper() == "CONNECT":
        return target
    rest = target.split("://", 1)[-1]
    return rest.split("/", 1)[0]
