"""/readyz: 200 only when the database, Redis and at least one Celery worker answer; 503 with
the reason otherwise. The workers' heartbeats are a Redis sorted set scored by Redis's clock."""

from __future__ import annotations

import uuid

import pytest
import redis
from django.db import OperationalError, connection
from django.test import Client

from config import readiness


@pytest.fixture
def workers_key(monkeypatch, settings):
    """A heartbeat set of this test's own: the session's stack has a worker beating too."""
    key = f"tandem:workers:test-{uuid.uuid4().hex}"
    monkeypatch.setattr(readiness, "WORKERS_KEY", key)
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.delete(key)
    client.close()


def get(path: str = "/readyz"):
    return Client().get(path, HTTP_HOST="10.1.2.3:8000")


@pytest.mark.django_db
def test_ready_when_database_redis_and_a_worker_answer(workers_key, settings):
    settings.ALLOWED_HOSTS = ["tandem.example"]  # probed by address, before the host check
    settings.SECURE_SSL_REDIRECT = True
    readiness.beat_once(workers_key, "worker-a:1")
    response = get()
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "checks": {"database": "ok", "redis": "ok", "worker": "ok"},
    }


@pytest.mark.django_db
def test_no_worker_is_503_with_the_reason(workers_key):
    response = get()
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    body = response.json()
    assert body["ok"] is False
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"] == "ok"
    assert body["reason"].startswith("no Celery worker has reported in the last 30 s")


@pytest.mark.django_db
def test_a_worker_that_stopped_beating_does_not_count(workers_key):
    seconds, _ = workers_key.time()
    stale = seconds - readiness.WORKER_STALE_SECONDS - 5
    workers_key.zadd(readiness.WORKERS_KEY, {"gone:7": stale})
    assert get().status_code == 503
    readiness.beat_once(workers_key, "alive:8")
    assert get().status_code == 200
    assert readiness.live_workers() == 1


@pytest.mark.django_db
def test_the_worker_check_can_be_skipped_for_a_web_instances_probe(workers_key):
    response = get("/readyz?skip=worker")
    assert response.status_code == 200
    assert response.json()["checks"]["worker"] == "skipped"
    # Only the worker check can be left out.
    assert get("/readyz?skip=database,redis,worker").json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_redis_down_is_503(workers_key, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    body = get().json()
    assert body["ok"] is False
    assert body["checks"]["redis"] == "Redis does not answer (ConnectionError)"
    assert "heartbeats could not be read" in body["checks"]["worker"]
    assert "127.0.0.1:1" not in body["reason"]  # no addresses for whoever probes


@pytest.mark.django_db
def test_database_down_is_503(workers_key, monkeypatch):
    readiness.beat_once(workers_key, "worker-a:1")

    def refuse():
        raise OperationalError("connection to server at 10.0.0.5 failed: password for tandem")

    monkeypatch.setattr(connection, "cursor", refuse)
    response = get()
    assert response.status_code == 503
    assert response.json()["reason"] == "the database does not answer (OperationalError)"
    assert "password" not in response.content.decode()


@pytest.mark.django_db
def test_embedded_mode_needs_no_worker(workers_key, settings):
    settings.RUN_EXECUTOR = "inprocess"
    assert get().status_code == 200


def test_heartbeat_thread_beats_and_says_goodbye(workers_key):
    thread = readiness.start_worker_heartbeat()
    name = readiness.worker_name()
    try:
        for _ in range(50):
            if workers_key.zscore(readiness.WORKERS_KEY, name) is not None:
                break
            thread.join(0.05)
        assert workers_key.zscore(readiness.WORKERS_KEY, name) is not None
        ok, message = readiness.this_host_beat_recently()
        assert ok, message
    finally:
        readiness.stop_worker_heartbeat()
        thread.join(5)
    assert not thread.is_alive()
    assert workers_key.zscore(readiness.WORKERS_KEY, name) is None
    assert readiness.this_host_beat_recently()[0] is False
