"""Database connections are bounded per process (issue 12, item 1).

A real Daphne with a pool of 5 takes 500 concurrent requests (anonymous, with made-up API
keys, signed in) while 50 API event streams stay open: no 5xx, and PostgreSQL never sees more
than 5 connections from it, sampled all along. Open streams hold no connection while they
wait (50 of them open at once against a pool of 5). A pool that stays empty past its timeout
answers 503 with a sentence, not a 500 or a hang."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import OperationalError
from django.http import HttpResponse, JsonResponse
from django.test import override_settings
from django.urls import path

from api.http import endpoint
from tests.api_client import make_key
from tests.conftest import start_web, stop_web

POOL_SIZE = 5


def _pg_dsn(db_name: str) -> str:
    db = settings.DATABASES["default"]
    return (
        f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db_name}"
    )


class Sampler(threading.Thread):
    """Counts the server's connections in pg_stat_activity every 20 ms until stopped."""

    def __init__(self, dsn: str, app_name: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.app_name = dsn, app_name
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="pool-sampler") as conn:
            while not self.done.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = %s",
                    [self.app_name],
                ).fetchone()
                self.samples.append(row[0])
                time.sleep(0.02)

    def stop(self) -> list[int]:
        self.done.set()
        self.join(5)
        return self.samples


@pytest.fixture
def pooled_web(tmp_path):
    """Daphne alone (no worker: nothing here queues a run), its pool capped at POOL_SIZE and
    its connections labelled so pg_stat_activity can tell them apart."""
    app_name = f"tandem-pool-test-{secrets.token_hex(4)}"
    env = {
        "DATABASE_POOL_SIZE": str(POOL_SIZE),
        "DATABASE_POOL_TIMEOUT": "15",
        "DATABASE_APPLICATION_NAME": app_name,
        # No rate limit: every request below reaches the database.
        "API_RATE_PER_MINUTE": "0",
        "API_KEY_RATE_PER_MINUTE": "0",
    }
    base, proc, log = start_web(tmp_path, extra_env=env)
    try:
        yield base, app_name, _pg_dsn(settings.DATABASES["default"]["NAME"]), log
    finally:
        stop_web(proc)


def _fake_key() -> str:
    return f"tdm_{secrets.token_urlsafe(6)[:8]}_{secrets.token_urlsafe(32)[:43]}"


async def _load(base: str, conversation, key: str, session: str):
    statuses: dict[str, list[int]] = {"anonymous": [], "fake key": [], "signed in": []}
    stream_status: list[int] = []
    limits = httpx.Limits(max_connections=700, max_keepalive_connections=0)
    timeout = httpx.Timeout(45)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        streams = []
        for _ in range(50):
            cm = client.stream(
                "GET",
                f"/api/v1/conversations/{conversation.uuid}/events",
                headers={"Authorization": f"Bearer {key}"},
            )
            streams.append(cm)

        async def open_stream(cm):
            response = await cm.__aenter__()
            stream_status.append(response.status_code)
            if response.status_code == 200:
                lines = response.aiter_lines()
                async for line in lines:  # up to the snapshot: the stream is open and served
                    if line.startswith("event: snapshot"):
                        break
            return response

        opened = await asyncio.gather(*(open_stream(cm) for cm in streams))

        async def one(kind: str, index: int) -> None:
            if kind == "anonymous":
                response = await client.get("/api/v1/me")
            elif kind == "fake key":
                response = await client.get(
                    "/api/v1/me", headers={"Authorization": f"Bearer {_fake_key()}"}
                )
            else:
                cookies = {"Cookie": f"sessionid={session}"}
                url = "/api/v1/me" if index % 2 else f"/api/v1/conversations/{conversation.uuid}"
                response = await client.get(url, headers=cookies)
            statuses[kind].append(response.status_code)

        kinds = ["anonymous"] * 170 + ["fake key"] * 165 + ["signed in"] * 165
        started = time.monotonic()
        await asyncio.gather(*(one(kind, i) for i, kind in enumerate(kinds)))
        elapsed = time.monotonic() - started

        # The streams are still open and each is still answering (a heartbeat or an event is
        # not due yet; the transport being alive is what is checked).
        alive = sum(1 for response in opened if not response.is_closed)
        # With every stream open, a plain request is served at once: none holds a connection.
        quick = time.monotonic()
        after = await client.get("/api/v1/me", headers={"Cookie": f"sessionid={session}"})
        after_seconds = time.monotonic() - quick
        for cm in streams:
            await cm.__aexit__(None, None, None)
    return statuses, stream_status, elapsed, alive, after.status_code, after_seconds


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_connections_stay_within_the_pool_under_load(pooled_web, team, alice, conversation):
    from django.test import Client

    base, app_name, dsn, log = pooled_web
    key = make_key(team, alice, scope="read")
    browser = Client()
    browser.force_login(alice)
    session = browser.cookies["sessionid"].value

    sampler = Sampler(dsn, app_name)
    sampler.start()
    try:
        statuses, stream_status, elapsed, alive, after, after_seconds = asyncio.run(
            asyncio.wait_for(_load(base, conversation, key, session), 90)
        )
    finally:
        samples = sampler.stop()

    print(
        f"pool {POOL_SIZE}: {sum(map(len, statuses.values()))} requests in {elapsed:.1f}s, "
        f"{len(samples)} samples, most connections seen {max(samples)}"
    )
    assert stream_status == [200] * 50, log.read_text()[-3000:]
    assert alive == 50
    assert after == 200 and after_seconds < 3
    for kind, codes in statuses.items():
        errors = [code for code in codes if code >= 500]
        assert not errors, (kind, errors, log.read_text()[-3000:])
    assert set(statuses["anonymous"]) == {401}
    assert set(statuses["fake key"]) == {401}
    assert set(statuses["signed in"]) == {200}
    assert len(samples) > 20
    assert max(samples) <= POOL_SIZE, samples
    assert max(samples) >= 1  # the sampler did see the server's connections


# --- A pool that stays empty: 503 with words ------------------------------------------------


def _exhausted(request):
    from psycopg_pool import PoolTimeout

    try:
        raise PoolTimeout("couldn't get a connection after 5.00 sec")
    except PoolTimeout as exc:
        raise OperationalError("couldn't get a connection") from exc


def _broken(request):
    raise RuntimeError("something else")


urlpatterns = [
    path("api/v1/endpoint", endpoint("GET")(lambda request, caller: JsonResponse({}))),
    path("api/v1/exhausted", _exhausted),
    path("exhausted", _exhausted),
    path("broken", _broken),
    path("fine", lambda request: HttpResponse("ok")),
]
handler500 = "config.db.server_error"


@pytest.fixture
def database_up(monkeypatch):
    """What the middleware's own connection finds (the test database may not exist yet, and
    a database found down is remembered: config.db, "While PostgreSQL is down")."""
    from config import db as dbmod

    dbmod._down.clear()
    answers = {"up": True}
    monkeypatch.setattr(dbmod, "_database_answers", lambda: answers["up"])
    monkeypatch.setattr(dbmod, "_refill_pool", lambda: None)  # the test database's pool is fine
    yield answers
    answers["up"] = True  # a probe still running lets go
    dbmod._down.clear()


@pytest.mark.urls("tests.test_db_pool")
def test_an_exhausted_pool_answers_503_in_words(client, database_up):
    client.raise_request_exception = False
    page = client.get("/exhausted")
    assert page.status_code == 503
    assert page["Retry-After"] == "5"
    assert "every database connection is in use" in page.content.decode()
    api = client.get("/api/v1/exhausted")
    assert api.status_code == 503
    assert api.json()["error"]["code"] == "unavailable"
    assert client.get("/broken").status_code == 500  # anything else stays a plain 500


@pytest.mark.urls("tests.test_db_pool")
def test_an_api_endpoint_answers_503_when_the_pool_is_exhausted(client, monkeypatch, database_up):
    # Through the API's own error handling (api.http.endpoint), which answered 500 before;
    # the pool is first needed to look the caller's key up, so that is where it runs out.
    import api.http

    monkeypatch.setattr(api.http, "admit", _exhausted)
    response = client.get("/api/v1/endpoint")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "unavailable"
    assert "every database connection is in use" in response.json()["error"]["message"]


def test_settings_give_postgresql_a_bounded_pool(monkeypatch):
    import importlib

    import config.settings as live

    monkeypatch.setenv("DATABASE_URL", "postgres://u@db:5432/tandem")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "3")
    try:
        fresh = importlib.reload(live)
        db = fresh.DATABASES["default"]
        assert db["CONN_MAX_AGE"] == 0
        assert db["OPTIONS"]["pool"]["max_size"] == 7
        assert db["OPTIONS"]["pool"]["timeout"] == 3
        monkeypatch.setenv("DATABASE_POOL_SIZE", "0")
        assert "pool" not in importlib.reload(live).DATABASES["default"]["OPTIONS"]
    finally:
        monkeypatch.undo()
        importlib.reload(live)


# --- A database that is down or restarting: 503 with words, for pages and the API ----------------


def _down(request):
    import psycopg

    try:
        raise psycopg.OperationalError("connection failed: Connection refused")
    except psycopg.OperationalError as exc:
        raise OperationalError("connection failed") from exc


def _conflict(request):
    from psycopg.errors import SerializationFailure

    try:
        raise SerializationFailure("could not serialize access")
    except SerializationFailure as exc:
        raise OperationalError("could not serialize access") from exc


urlpatterns += [path("down", _down), path("conflict", _conflict)]


@pytest.mark.urls("tests.test_db_pool")
def test_a_database_that_is_down_answers_503_in_words(client, database_up, monkeypatch):
    from config import db as dbmod

    client.raise_request_exception = False
    assert client.get("/conflict").status_code == 500  # the database answered: not "down"
    page = client.get("/down")
    assert page.status_code == 503
    assert page["Retry-After"] == "5"
    assert "cannot reach its database" in page.content.decode()
    # A pool timeout behind which the database does not answer is "down" too.
    dbmod._down.clear()
    database_up["up"] = False
    assert "cannot reach its database" in client.get("/exhausted").content.decode()


@pytest.mark.django_db
def test_the_api_answers_503_while_the_database_is_down(client, monkeypatch, database_up):
    import psycopg

    from api import http

    def refuse(request):
        try:
            raise psycopg.OperationalError("connection failed: Connection refused")
        except psycopg.OperationalError as exc:
            raise OperationalError("connection failed") from exc

    monkeypatch.setattr(http, "admit", refuse)
    response = client.get("/api/v1/me")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "unavailable"
    assert "cannot reach its database" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_once_the_database_is_found_down_requests_are_refused_at_once(
    client, monkeypatch, database_up
):
    """The first request that finds PostgreSQL down says so; the next ones don't wait for the
    pool: 503 at once until a background probe's own connection succeeds again."""
    from config import db as dbmod

    answers = database_up
    answers["up"] = False
    monkeypatch.setattr(dbmod, "DOWN_PROBE_SECONDS", 0.01)
    client.raise_request_exception = False
    with override_settings(ROOT_URLCONF="tests.test_db_pool"):
        assert client.get("/down").status_code == 503  # found down: remembered
    assert dbmod.database_known_down()
    started = time.monotonic()
    refused = client.get("/api/v1/me")
    assert refused.status_code == 503 and refused["Retry-After"] == "5"
    assert "cannot reach its database" in refused.json()["error"]["message"]
    assert time.monotonic() - started < 1
    assert client.get("/healthz").status_code == 200  # liveness is not the database's
    answers["up"] = True  # back: the probe sees it and lets requests through
    deadline = time.monotonic() + 10
    while dbmod.database_known_down() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not dbmod.database_known_down()
    assert client.get("/api/v1/me").status_code == 401


@pytest.mark.django_db
def test_a_pool_that_gives_up_reconnecting_marks_the_database_down(client, database_up):
    """psycopg_pool's reconnect_failed (settings: after 2 s, not its default 5 minutes) says
    the database is down: requests are answered at once instead of each waiting for the pool."""
    from config import db as dbmod

    pool_options = settings.DATABASES["default"]["OPTIONS"].get("pool") or {}
    database_up["up"] = False
    settings_reconnect_failed = pool_options.get("reconnect_failed")
    if settings_reconnect_failed is None:  # no pool in this run's settings: the hook itself
        settings_reconnect_failed = dbmod.pool_gave_up
    else:
        assert pool_options["reconnect_timeout"] <= 5
    settings_reconnect_failed(object())
    assert dbmod.database_known_down()
    response = client.get("/api/v1/me")
    assert response.status_code == 503
    assert "cannot reach its database" in response.json()["error"]["message"]
