#!/usr/bin/env python
"""What the Prometheus metrics cost: per request, per counted event, per scrape.

    PROMETHEUS_MULTIPROC_DIR is set by the bench itself (a temporary directory).
    DATABASE_URL=… REDIS_URL=… .venv/bin/python bench/metrics.py [--requests 3000] [--processes 8]

See docs/benchmarks.md ("Metrics") for what it measured.

1. **A request's added cost.** Django's test client (in process: no sockets, so the figure is
   not drowned in network noise) asks ``--requests`` times for a cheap page — /healthz, answered
   by a middleware after the metrics middleware, so the timing around it is all there is to
   see — with the metrics middleware in the stack and without it, alternating blocks of 100 so
   that load on the machine falls on both alike. Reported: the median per request of each, and
   the difference.
2. **The middleware's own work**, timed alone: reading the clock twice, naming the route,
   ``labels(...).observe()`` into the memory-mapped file of multiprocess mode.
3. **A counter increment** (the LLM, tool, Slack counters) in multiprocess mode.
4. **A scrape**: /metrics rendering every process's files (``--processes`` copies of this
   process's files, as if that many web and worker processes had counted the same things) plus
   the runs and queue read from PostgreSQL and Redis.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_call(fn, n: int) -> float:
    """Median of 5 rounds of ``n`` calls, in microseconds per call."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=8)
    args = parser.parse_args()

    multiproc = tempfile.mkdtemp(prefix="tandem-bench-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client
    from django.test.utils import override_settings, setup_test_environment

    from config import metrics

    setup_test_environment()
    client = Client()
    with_mw = list(settings.MIDDLEWARE)
    without_mw = [m for m in with_mw if m != "config.metrics.RequestMetricsMiddleware"]

    timings: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(args.requests // 100):
        for name, stack in (("with", with_mw), ("without", without_mw)):
            with override_settings(MIDDLEWARE=stack):
                client.get("/healthz")  # the handler is rebuilt for the new stack: warm it
                for _ in range(100):
                    start = time.perf_counter()
                    client.get("/healthz")
                    timings[name].append((time.perf_counter() - start) * 1e6)
    med_with = statistics.median(timings["with"])
    med_without = statistics.median(timings["without"])
    print(f"request /healthz (test client, {len(timings['with'])} each):")
    print(f"  with the metrics middleware    {med_with:8.1f} µs median")
    print(f"  without it                     {med_without:8.1f} µs median")
    print(f"  added                          {med_with - med_without:8.1f} µs")

    class Match:
        view_name, route = "assistant:conversation", ""

    class Request:
        resolver_match = Match()
        method = "GET"
        path = "/t/acme/c/x/"

    class Response:
        status_code = 200

    mw = metrics.RequestMetricsMiddleware(lambda request: Response())
    request = Request()
    print(f"middleware body alone            {per_call(lambda: mw(request), 20000):8.2f} µs")
    counter = metrics.LLM_CALLS.labels("openai/bench", "ok")
    print(f"counter increment (multiprocess) {per_call(counter.inc, 20000):8.2f} µs")

    # Fill the families a busy host has (20 routes x 3 statuses, 5 models, 6 tools), then
    # copy this process's files as if --processes processes had written them.
    for i in range(20):
        for status in ("2xx", "3xx", "4xx"):
            metrics.HTTP_DURATION.labels(f"route_{i}", "GET", status).observe(0.01)
    for m in range(5):
        metrics.LLM_LATENCY.labels(f"model_{m}", "ok").observe(1.0)
        metrics.LLM_TOKENS.labels(f"model_{m}", "prompt").inc(100)
    for t in range(6):
        metrics.TOOL_EXECUTIONS.labels(f"tool_{t}", "ok").inc()
    pid = str(os.getpid())
    for path in list(Path(multiproc).glob(f"*_{pid}.db")):
        for p in range(1, args.processes):
            shutil.copy(path, path.with_name(path.name.replace(pid, f"9{p:05d}")))
    files = len(list(Path(multiproc).glob("*.db")))

    def scrape() -> None:
        metrics.generate_latest(metrics.registry())

    scrape()
    ms = per_call(scrape, 20) / 1000
    size = len(metrics.generate_latest(metrics.registry()))
    print(f"scrape ({files} files, {size:,} bytes, DB + Redis reads included) {ms:8.1f} ms")
    reads = per_call(lambda: (metrics._run_counts(), metrics._queue_lengths()), 20) / 1000
    print(f"  of which the runs query and the queue's LLEN      {reads:8.1f} ms")
    shutil.rmtree(multiproc, ignore_errors=True)


if __name__ == "__main__":
    main()
