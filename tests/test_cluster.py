"""The scaled-out topology survives its faults: bench/cluster.py's phases, smaller.

One nginx in front of two Daphnes, two Celery workers and beat (deploy/cluster.py), against the
test database and a redis-server of this test's own (it is restarted here); the model is the
scripted fake provider over HTTP. A few conversations stream, each watched by a browser-like
viewer on each Daphne and one through the API's event stream, while the worker executing
runs is killed -9, then a Daphne, then Redis is restarted as the replies end. What is asserted
is what must hold whatever the machine's load: no saved message lost, missing or doubled, every
viewer shown exactly the saved text when its run ended (or told by a resync that it ended),
every viewer told, the killed worker's runs failed in words with their streamed text kept, the
event stream told to reset, no worker dying of the Redis restart. How long each recovery took
is printed (bench/cluster.py measures it; docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from assistant.services import INTERRUPTED

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 3
TOKENS = 120
DELAY_MS = 40


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


deploy = _load("tandem_deploy_cluster", ROOT / "deploy" / "cluster.py")
bench = _load("tandem_bench_cluster", ROOT / "bench" / "cluster.py")


def _free_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (nginx, then one per Daphne)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + count < 65000 and not any(bench.port_open(base + i) for i in range(count)):
            return base
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="module")
def cluster(django_db_setup, tmp_path_factory, provider_port):
    """One cluster for this module's tests (each kills or restarts something; the supervisor
    starts a killed process again, and each phase waits for it)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    if deploy.nginx_binary() is None:
        pytest.fail(deploy.NGINX_MISSING, pytrace=False)
    redis = bench.OwnRedis(_free_run(1), tmp_path / "redis.log")
    redis.start()
    port = _free_run(3)
    db = settings.DATABASES["default"]
    env = {
        **deploy.default_env(port),
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": redis.url,
        "RUN_EXECUTOR": "celery",
        "SECRET_KEY": settings.SECRET_KEY,
        "SITE_URL": f"http://127.0.0.1:{port}",
        "LLM_MODEL": "openai/fake-model",
        "LLM_API_BASE": f"http://127.0.0.1:{provider_port}/v1",
        "LLM_API_KEY": "test-key",
        "LLM_MAX_RETRIES": "1",
        "DATABASE_POOL_SIZE": "5",
        "TANDEM_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_ALLOW_ASYNC_UNSAFE": "",
        "API_RATE_PER_MINUTE": "0",
        "API_KEY_RATE_PER_MINUTE": "0",
    }
    running = deploy.Cluster(dir=tmp_path / "cluster", env=env, port=port, concurrency=16)
    try:
        running.start(migrate=False)  # the test database is migrated already
    except BaseException:
        redis.stop()
        raise

    def restart_redis(outage: float) -> tuple[float, float]:
        stopped = time.time()
        redis.stop()
        time.sleep(outage)
        started = time.time()
        redis.start()
        return stopped, started

    yield running, redis, restart_redis
    running.stop()
    redis.stop()
    for name in running.procs:
        print(f"--- {name}\n{running.log_tail(name, 1500)}", file=sys.stderr)


def _check(info: dict) -> None:
    """What every phase must show, whatever the fault."""
    print(json.dumps(info, indent=1), file=sys.stderr)
    assert sum(info["runs"].values()) == STREAMS
    assert info["saved_wrong"] == 0, "a saved message differs from what the provider said"
    assert info["messages_missing"] == 0 and info["messages_doubled"] == 0
    assert info["viewer_not_told"] == 0, "a viewer never learnt that its run ended"
    assert info["viewer_text_lost"] == 0 and info["viewer_text_dup"] == 0
    # A run that ended while its viewer reconnected is re-fetched whole, as the browser does.
    # So is a run whose end event was lost with Redis, once a resync no longer lists it; and
    # a run whose last deltas were lost shows the saved message its end event brings.
    shown = (
        info["viewer_text_ok"]
        + info["viewer_ended_while_away"]
        + info["viewer_end_by_resync"]
        + info["viewer_short_then_saved_shown"]
    )
    assert shown == info["viewer_runs"] == 2 * STREAMS


def _phase(cluster, fault: str) -> dict:
    running, redis, restart_redis = cluster
    for proc in running.procs.values():  # what an earlier test killed is back
        running.wait_ready(proc)
    user, team, cookie, key = bench.make_member()
    h = bench.Harness(running, redis.url, user, team, cookie, key, restart_redis)
    info = asyncio.run(bench.run_phase(h, fault, streams=STREAMS, tokens=TOKENS, delay_ms=DELAY_MS))
    _check(info)
    print(f"{fault}: recovered in {info['recovery_s']} s (load {os.getloadavg()[0]:.1f})")
    return info


def test_a_killed_worker_s_runs_fail_in_words_with_their_streamed_text(cluster):
    # kill -9 of the worker executing the most runs: they fail at once, with what had streamed
    # saved (Retry offers the rest); the other worker's runs complete.
    info = _phase(cluster, "worker")
    killed = int(info["killed"].split("executing ")[1].split(" ")[0])
    assert info["killed_runs_failed"] == killed >= 1
    assert info["killed_runs_error"] == [INTERRUPTED]
    assert info["runs"].get("succeeded", 0) == STREAMS - killed


def test_viewers_of_a_killed_daphne_resync_through_nginx(cluster):
    info = _phase(cluster, "web")
    assert info["runs"] == {"succeeded": STREAMS}
    assert info["reconnected"] == STREAMS  # one viewer per conversation was on web1


def test_a_redis_restart_as_replies_end_loses_nothing_and_resets_event_streams(cluster):
    # Stopped (keeping nothing) and started again a second later, as the replies end: deltas
    # and end events are published into the outage. Every viewer is still told (the Daphnes
    # resync their sockets once their channel layer is back), and the workers survive it
    # without being restarted (config/celery.py, Consumer).
    info = _phase(cluster, "redis-end")
    assert set(info["runs"]) <= {"succeeded", "failed"}
    assert info["sse"]["resets"] >= 1, "the event stream was not told its log is gone"
    assert info["restarted"] == [], "a process died of the Redis restart"
