"""PostgreSQL going away and coming back, as a Daphne sees it (issue 15).

A real Daphne reaches the test database through a TCP relay of this test's own, which can drop
every connection and refuse new ones (PostgreSQL stopped) and then accept again (started):
the machine's PostgreSQL itself is shared, so it is never restarted here (bench/cluster.py
restarts one of its own). Requests carry a made-up API key, so each needs the database.

What must hold: during the outage every answer is a 503 in words, and once the outage is
known they come at once; after it, the service answers again within a couple of seconds by
itself. Before the pool was told to give up early and refilled on recovery (config/db.py),
psycopg_pool's doubling back-off (1, 2, 4, 8 s...) had its next try ~15 s after the first
failure, so after this 8 s outage the first 200 came ~7 s after PostgreSQL was back.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest
from django.conf import settings

from api.keys import new_key
from tests.conftest import free_port, start_web, stop_web

OUTAGE_SECONDS = 8.0


class Relay:
    """A TCP relay to PostgreSQL that can be switched off (connections cut, new ones refused)
    and on again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # switched off
            try:
                server = socket.create_connection(self.target, 5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _get(client: httpx.Client) -> tuple[float, int, float, str]:
    key = new_key()[0]  # well-formed, unknown: looked up in the database, then 401
    started = time.monotonic()
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    return started, response.status_code, time.monotonic() - started, response.text


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_requests_fail_fast_while_postgresql_is_down_and_recover_by_themselves(tmp_path):
    db = settings.DATABASES["default"]
    relay = Relay((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    relay.up()
    user = db["USER"] or "postgres"
    env = {
        "DATABASE_URL": f"postgres://{user}@127.0.0.1:{relay.port}/{db['NAME']}",
        "DATABASE_POOL_TIMEOUT": "5",
        # A full pool, as a busy server's is: every connection it had is broken by the outage
        # and being reconnected, so there is no room to grow a fresh one on demand.
        "DATABASE_POOL_SIZE": "2",
        "API_RATE_PER_MINUTE": "0",
        "API_KEY_RATE_PER_MINUTE": "0",
    }
    base, proc, log = start_web(tmp_path, extra_env=env)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            assert _get(client)[1] == 401  # the key is looked up: the database answers
            relay.down()
            down_at = time.monotonic()
            during = []
            while time.monotonic() - down_at < OUTAGE_SECONDS:
                during.append(_get(client))
                time.sleep(0.1)
            relay.up()
            up_at = time.monotonic()
            after = []
            while time.monotonic() - up_at < 30:
                after.append(_get(client))
                if after[-1][1] == 401:
                    break
                time.sleep(0.1)
    finally:
        relay.down()
        stop_web(proc)
    report = [(round(t - down_at, 1), status, round(took, 2)) for t, status, took, _ in during]
    report += [(round(t - down_at, 1), status, round(took, 2)) for t, status, took, _ in after]
    print(f"(sent at, status, seconds) from the outage: {report}")
    assert {status for _, status, _, _ in during} == {503}, log.read_text()[-3000:]
    assert all("cannot reach its database" in text for *_, text in during)
    # The first request finds the database down (waiting for the pool at most); the ones after
    # it (sent one at a time) don't wait for the pool.
    assert len(during) > 5 and not [r for r in during[1:] if r[2] >= 1.0], report
    assert after[-1][1] == 401, log.read_text()[-3000:]
    back_after = after[-1][0] + after[-1][2] - up_at
    print(f"first answer from the database {back_after:.2f} s after it was back")
    assert back_after < 4.0, report
