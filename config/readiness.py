"""Readiness: can this instance do its work right now?

``/healthz`` says the process answers (liveness); ``/readyz`` says it can serve: the database
answers, Redis answers, and (when replies run on Celery) at least one worker has said it is
alive within the last ``WORKER_STALE_SECONDS``. Each worker process says so every
``WORKER_BEAT_SECONDS`` by scoring its name in a Redis sorted set with Redis's own clock (so
the machines' clocks don't matter). ``python -m config.readiness --worker`` is the worker
containers' health check: it succeeds when a worker on this host beat recently.

The same beat also renews a key of the worker's own that expires after
``WORKER_ALIVE_SECONDS``: a run names the worker executing it (Run.worker), and the other
workers fail the runs of a worker whose key has expired (killed, or its machine gone) within
seconds instead of waiting for the run's own heartbeat to go stale
(assistant.services.fail_orphaned_runs).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading

from django.conf import settings
from django.http import HttpRequest, JsonResponse

log = logging.getLogger(__name__)

WORKERS_KEY = "tandem:workers"
WORKER_BEAT_SECONDS = 2
WORKER_STALE_SECONDS = 30
# A worker that has not renewed its key for this long is gone: its runs are failed. Five beats,
# so a worker whose heartbeat thread waits behind a busy interpreter is not taken for dead.
WORKER_ALIVE_SECONDS = 10
# A check that takes longer than this counts as failed (a probe has a timeout of its own).
CHECK_TIMEOUT_SECONDS = 2
# What a probe may leave out: a web instance's load-balancer probe need not depend on the
# workers (without them replies wait in the queue, but pages and the API still answer).
SKIPPABLE = ("worker",)


def _redis():
    import redis

    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
    )


def check_database() -> str | None:
    """None when the database answers, else why not (in words, no addresses or passwords)."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        log.warning("Readiness: the database does not answer: %r", exc)
        return f"the database does not answer ({type(exc).__name__})"
    return None


def check_redis() -> str | None:
    if not settings.REDIS_URL:
        return None
    try:
        client = _redis()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        log.warning("Readiness: Redis does not answer: %r", exc)
        return f"Redis does not answer ({type(exc).__name__})"
    return None


def live_workers() -> int:
    """Worker processes that beat within WORKER_STALE_SECONDS (by Redis's clock)."""
    client = _redis()
    try:
        now = _redis_now(client)
        return int(client.zcount(WORKERS_KEY, now - WORKER_STALE_SECONDS, "+inf"))
    finally:
        client.close()


def check_workers() -> str | None:
    if settings.RUN_EXECUTOR != "celery":
        return None  # replies run inside the server process itself
    try:
        count = live_workers()
    except Exception as exc:
        log.warning("Readiness: could not read the workers' heartbeats: %r", exc)
        return f"the workers' heartbeats could not be read ({type(exc).__name__})"
    if count == 0:
        return (
            f"no Celery worker has reported in the last {WORKER_STALE_SECONDS} s: "
            "replies would wait in the queue"
        )
    return None


CHECKS = {"database": check_database, "redis": check_redis, "worker": check_workers}


def readyz(request: HttpRequest) -> JsonResponse:
    """200 {"ok": true, "checks": {...}} or 503 with every failed check's reason.
    ``?skip=worker`` leaves the worker check out (see SKIPPABLE)."""
    skip = {name.strip() for name in request.GET.get("skip", "").split(",") if name.strip()}
    checks: dict[str, str] = {}
    reasons: list[str] = []
    for name, check in CHECKS.items():
        if name in skip and name in SKIPPABLE:
            checks[name] = "skipped"
            continue
        reason = check()
        checks[name] = reason or "ok"
        if reason:
            reasons.append(reason)
    if reasons:
        response = JsonResponse(
            {"ok": False, "checks": checks, "reason": "; ".join(reasons)}, status=503
        )
        response["Retry-After"] = "5"
        # Not an error of Django's to log: the checks logged why, and a starting instance is
        # unready as a matter of course.
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response
    return JsonResponse({"ok": True, "checks": checks})


# --- The workers' side ---------------------------------------------------------------------------
def _redis_now(client) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def redis_started() -> float:
    """When Redis started (epoch seconds, by its own clock; at most a second late)."""
    client = _redis()
    try:
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.info("server")
        (seconds, micros), server = pipe.execute()
    finally:
        client.close()
    return seconds + micros / 1_000_000 - int(server.get("uptime_in_seconds", 0))


def mark_once(key: str, seconds: int) -> bool:
    """Whether this call is the first to set ``key`` (in this Redis's lifetime, at most
    ``seconds`` ago)."""
    client = _redis()
    try:
        return bool(client.set(key, "1", nx=True, ex=seconds))
    finally:
        client.close()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def alive_key(name: str) -> str:
    return f"tandem:worker:{name}:alive"


def beat_once(client, name: str) -> None:
    now = _redis_now(client)
    pipe = client.pipeline()
    pipe.zadd(WORKERS_KEY, {name: now})
    pipe.set(alive_key(name), "1", ex=WORKER_ALIVE_SECONDS)
    # Workers that stopped without saying goodbye (killed) drop out after a while.
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 10 * WORKER_STALE_SECONDS)
    pipe.execute()


_stop = threading.Event()
_beating: list[threading.Thread] = []
_this_worker = ""


def redis_tag() -> str:
    """Which Redis this process beats in (a digest of REDIS_URL): a worker's liveness is
    judged only by workers of the same Redis, where its alive key would be."""
    import hashlib

    return hashlib.sha256(settings.REDIS_URL.encode()).hexdigest()[:8]


def executing_worker() -> str:
    """What a run claimed here records as its worker: ``host:pid@redis-tag`` when this process
    is a Celery worker that beats (its alive key tells whether it still lives); "" elsewhere
    (embedded server, tests, management commands)."""
    return f"{_this_worker}@{redis_tag()}" if _this_worker else ""


def dead_workers(names: set[str]) -> set[str]:
    """Those of ``names`` (executing_worker() values) whose alive key has expired. Only
    workers of this process's Redis are judged. Nothing while Redis started less than
    WORKER_ALIVE_SECONDS + a beat ago: a restarted Redis (which keeps nothing here) has no key
    of anyone until each live worker's next beat."""
    suffix = f"@{redis_tag()}"
    names = {name.removesuffix(suffix) for name in names if name.endswith(suffix)}
    if not names:
        return set()
    client = _redis()
    try:
        uptime = int(client.info("server").get("uptime_in_seconds", 0))
        if uptime < WORKER_ALIVE_SECONDS + WORKER_BEAT_SECONDS:
            return set()
        ordered = sorted(names)
        found = client.mget([alive_key(name) for name in ordered])
    finally:
        client.close()
    return {name + suffix for name, value in zip(ordered, found, strict=True) if value is None}


def start_worker_heartbeat() -> threading.Thread:
    """Called when a Celery worker is ready: beat now and every WORKER_BEAT_SECONDS."""
    global _this_worker
    name = _this_worker = worker_name()
    _stop.clear()

    def beat_forever() -> None:
        client = _redis()
        while True:
            try:
                beat_once(client, name)
            except Exception as exc:
                log.warning("Worker heartbeat: Redis did not take it: %r", exc)
            if _stop.wait(WORKER_BEAT_SECONDS):
                break
        try:
            client.zrem(WORKERS_KEY, name)
            client.delete(alive_key(name))
        finally:
            client.close()

    thread = threading.Thread(target=beat_forever, name="tandem-worker-heartbeat", daemon=True)
    thread.start()
    _beating.append(thread)
    return thread


def stop_worker_heartbeat() -> None:
    """Called when the worker shuts down: the heartbeat thread says goodbye (ZREM) and ends,
    before the process does (it is a daemon thread)."""
    global _this_worker
    _this_worker = ""
    _stop.set()
    while _beating:
        _beating.pop().join(5)


def this_host_beat_recently() -> tuple[bool, str]:
    host = socket.gethostname()
    client = _redis()
    try:
        now = _redis_now(client)
        mine = [
            (member.decode(), score)
            for member, score in client.zrangebyscore(
                WORKERS_KEY, now - WORKER_STALE_SECONDS, "+inf", withscores=True
            )
            if member.decode().rsplit(":", 1)[0] == host
        ]
    finally:
        client.close()
    if not mine:
        return False, f"no worker on {host} reported in the last {WORKER_STALE_SECONDS} s"
    return True, f"{len(mine)} worker process(es) on {host} alive"


def main(argv: list[str]) -> int:
    """``python -m config.readiness`` runs /readyz's checks without a web server;
    ``--worker``: whether a worker on this host beat recently (the worker's health check)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    if "--worker" in argv:
        try:
            ok, message = this_host_beat_recently()
        except Exception as exc:
            ok, message = False, f"Redis does not answer ({type(exc).__name__})"
        print(message)
        return 0 if ok else 1
    reasons = [reason for check in CHECKS.values() if (reason := check())]
    print("; ".join(reasons) if reasons else "ready")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
