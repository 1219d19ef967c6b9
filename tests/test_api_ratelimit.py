"""The rate limiter is one count in Redis for every process: many OS processes hammering the
same bucket at the same instant let through exactly the limit, never more."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid

import pytest
from django.conf import settings

from api import ratelimit
from tests.conftest import ROOT

WORKER = """
import os, sys, time
import django
django.setup()
from api import ratelimit

attempts = int(sys.argv[1])
buckets = [(sys.argv[i], int(sys.argv[i + 1])) for i in range(2, len(sys.argv), 2)]
ratelimit._script()  # connect and load the script before the start
print("ready", flush=True)
sys.stdin.readline()  # the start: every process is ready by then
verdicts = [ratelimit.hit(buckets) for _ in range(attempts)]
allowed = sum(v.allowed for v in verdicts)
retry = {v.retry_after for v in verdicts if not v.allowed}
assert all(1 <= r <= 60 for r in retry), retry
print(allowed)
"""


def hammer(processes: int, attempts: int, buckets: list[tuple[str, int]]) -> list[int]:
    """Every process makes ``attempts`` checks, all starting at the same moment: each says
    it is ready (Django imported, Redis connected), and only then are they all told to go."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "REDIS_URL": settings.REDIS_URL,
    }
    args = [str(attempts)]
    for key, limit in buckets:
        args += [key, str(limit)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    counts = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        counts.append(int(out.split()[-1]))
    return counts


def bucket() -> str:
    return f"tandem:rl:test:{uuid.uuid4().hex}"


@pytest.mark.slow
def test_many_processes_get_exactly_the_limit(redis_clean):
    counts = hammer(processes=8, attempts=400, buckets=[(bucket(), 1500)])
    print(f"\n8 processes x 400 attempts, limit 1500: allowed {counts} = {sum(counts)}")
    assert sum(counts) == 1500  # of 3200 tries, exactly the limit
    assert sum(1 for c in counts if 0 < c < 400) >= 2  # they were refused while competing


@pytest.mark.slow
def test_the_tightest_of_several_buckets_holds_and_refusals_cost_nothing(redis_clean):
    person, key = bucket(), bucket()
    counts = hammer(processes=6, attempts=60, buckets=[(person, 1000), (key, 90)])
    assert sum(counts) == 90
    # Only the requests let through were counted against the person's bucket.
    assert int(redis_clean.get(person)) == 90
    assert int(redis_clean.get(key)) == 90
    assert 0 < redis_clean.pttl(key) <= ratelimit.WINDOW_MS


def redis_ms(client) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def test_a_window_opens_with_its_first_request_and_lasts_a_minute(redis_clean):
    name = bucket()
    opening = redis_ms(redis_clean)
    first = ratelimit.hit([(name, 2)])
    opened = redis_ms(redis_clean)
    assert (first.allowed, first.limit, first.remaining) == (True, 2, 1)
    # A minute from the first request, by Redis's clock: however long the calls take.
    ends = redis_clean.pexpiretime(name)
    assert opening + ratelimit.WINDOW_MS <= ends <= opened + ratelimit.WINDOW_MS
    assert ratelimit.hit([(name, 2)]).remaining == 0
    before = redis_ms(redis_clean)
    refused = ratelimit.hit([(name, 2)])
    after = redis_ms(redis_clean)
    assert not refused.allowed
    assert (
        math.ceil((ends - after) / 1000) <= refused.retry_after <= math.ceil((ends - before) / 1000)
    )
    redis_clean.pexpire(name, 0)  # the minute is up: Redis drops the window's key at once
    assert not redis_clean.exists(name)
    assert ratelimit.hit([(name, 2)]).allowed


def test_no_buckets_no_limit():
    assert ratelimit.hit([]).allowed
    assert ratelimit.buckets_for(1, None)[0][1] == settings.API_RATE_PER_MINUTE


def test_redis_down_lets_requests_through(settings, caplog):
    ratelimit._registered = None
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    try:
        assert ratelimit.hit([(bucket(), 1)]).allowed
    finally:
        ratelimit._registered = None
    assert "Rate limit check failed" in caplog.text
