"""Prometheus metrics: what Tandem counts, and the /metrics endpoint that shows them.

Every process of a host (each Daphne, each Celery worker) counts into memory-mapped files in
PROMETHEUS_MULTIPROC_DIR; /metrics, answered by whichever web process gets the scrape, adds them
all up (prometheus-client's multiprocess mode). Without that directory each process counts in
its own memory and /metrics shows only the process that answered — right for embedded mode,
where one process does everything.

Gauges of state that lives in the database or Redis (runs queued / running / waiting, the
Celery queue's length) are not counted by anyone: they are read when Prometheus scrapes (one
GROUP BY over indexed statuses, one LLEN per queue), so they can't drift from the truth.

/metrics is answered only when METRICS_TOKEN or METRICS_ALLOW_IPS is set: it names models,
tools and routes, and it runs queries, so it is not for the world. Unconfigured it is 404 like
any page that doesn't exist — an operator who never asked for it has nothing exposed.
"""

from __future__ import annotations

import contextlib
import glob
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger(__name__)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Metrics without labels open their file as they are declared, below: the directory must
    # be there first (process_started cleans it, sparing this process's own files).
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# --- What is counted -----------------------------------------------------------------------------
# Label values are bounded sets: URL route names (never a path with ids in it), models a team
# configured, tool names, outcomes.

HTTP_DURATION = Histogram(
    "tandem_http_request_duration_seconds",
    "Time to answer an HTTP request, by route (the URL pattern's name), method and status class.",
    ["route", "method", "status"],
)
WEBSOCKETS_OPEN = Gauge(
    "tandem_websocket_connections",
    "WebSocket connections open (conversation pages and shared pages).",
    ["kind"],
    multiprocess_mode="livesum",
)
SSE_OPEN = Gauge(
    "tandem_sse_connections",
    "Server-sent event streams of the JSON API open.",
    multiprocess_mode="livesum",
)
DELTA_LAG = Histogram(
    "tandem_delta_lag_seconds",
    "From a delta's emission by the agent to its publication to viewers.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LLM_CALLS = Counter(
    "tandem_llm_calls_total",
    "Calls to a language model, by model and outcome.",
    ["model", "outcome"],
)
LLM_TOKENS = Counter(
    "tandem_llm_tokens_total", "Tokens of model calls, by model and kind.", ["model", "kind"]
)
LLM_COST = Counter("tandem_llm_cost_usd_total", "Priced cost of model calls, in USD.", ["model"])
LLM_LATENCY = Histogram(
    "tandem_llm_latency_seconds",
    "Duration of a model call, by model and outcome.",
    ["model", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
TOOL_EXECUTIONS = Counter(
    "tandem_tool_executions_total", "Tool calls executed, by tool and outcome.", ["tool", "outcome"]
)
SANDBOX_SECONDS = Counter(
    "tandem_sandbox_seconds_total",
    "Wall time spent in tool calls (the sandbox), by tool.",
    ["tool"],
)
BUDGET_REFUSALS = Counter(
    "tandem_budget_refusals_total",
    "Messages and model calls refused because a budget was used up, by limit and stage.",
    ["limit", "stage"],
)
SLACK_DELIVERIES = Counter(
    "tandem_slack_deliveries_total",
    "Slack posts attempted, by kind and outcome (posted, retry, failed).",
    ["kind", "outcome"],
)

# Read at scrape time (see ScrapeTimeCollector).
RUNS = "tandem_runs"
CELERY_QUEUE = "tandem_celery_queue_length"

# Every metric family Tandem exports (the Grafana dashboard's test checks its queries use only
# these).
EXPORTED = {
    metric._name
    for metric in (
        HTTP_DURATION,
        WEBSOCKETS_OPEN,
        SSE_OPEN,
        DELTA_LAG,
        LLM_CALLS,
        LLM_TOKENS,
        LLM_COST,
        LLM_LATENCY,
        TOOL_EXECUTIONS,
        SANDBOX_SECONDS,
        BUDGET_REFUSALS,
        SLACK_DELIVERIES,
    )
} | {RUNS, CELERY_QUEUE}


def safely(record: Callable[..., Any], *args: Any) -> None:
    """Counting must never break what is counted (a full disk under the multiprocess files)."""
    try:
        record(*args)
    except Exception:
        log.warning("Could not record a metric", exc_info=True)


# --- Read when Prometheus scrapes ---------------------------------------------------------------


class ScrapeTimeCollector:
    """Runs by status and the Celery queue's length, read from their source on each scrape."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        runs = GaugeMetricFamily(
            RUNS, "Runs queued, running or waiting for approval.", labels=["status"]
        )
        try:
            for status, count in _run_counts().items():
                runs.add_metric([status], count)
        except Exception as exc:
            log.warning("Metrics: could not count runs: %r", exc)
        yield runs
        queues = GaugeMetricFamily(
            CELERY_QUEUE, "Tasks waiting in the Celery queue (Redis LLEN).", labels=["queue"]
        )
        try:
            for queue, length in _queue_lengths().items():
                queues.add_metric([queue], length)
        except Exception as exc:
            log.warning("Metrics: could not read the Celery queue: %r", exc)
        yield queues


def _run_counts() -> dict[str, int]:
    from django.db.models import Count

    from assistant.models import Run, RunStatus

    live = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING)
    counts = {str(status): 0 for status in live}
    rows = Run.objects.filter(status__in=live).values_list("status").annotate(n=Count("id"))
    for status, n in rows:
        counts[status] = n
    return counts


def _queue_lengths() -> dict[str, int]:
    if settings.RUN_EXECUTOR != "celery" or not settings.REDIS_URL:
        return {}
    from .celery import app
    from .readiness import _redis

    names = sorted({app.conf.task_default_queue, *(app.conf.task_queues or ())})
    client = _redis()
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))
    finally:
        client.close()


_scrape_time = ScrapeTimeCollector()


def registry(*, scrape_time: bool = True) -> CollectorRegistry:
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not multiproc_dir:
        # One process: its own counters, plus what is read at scrape time.
        scrape = CollectorRegistry(auto_describe=False)
        if scrape_time:
            scrape.register(_scrape_time)
        return _Combined(REGISTRY, scrape)
    combined = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(combined, path=multiproc_dir)
    if scrape_time:
        combined.register(_scrape_time)
    return combined


class _Combined(CollectorRegistry):
    def __init__(self, *registries: CollectorRegistry) -> None:
        super().__init__(auto_describe=False)
        self._registries = registries

    def collect(self) -> Iterable[Metric]:
        for one in self._registries:
            yield from one.collect()


# --- /metrics ----------------------------------------------------------------------------------


NOT_FOUND = "Not found.\n"
TOKEN_REQUIRED = "A metrics token is required: Authorization: Bearer <METRICS_TOKEN>.\n"


def refusal(address: str | None, authorization: str) -> tuple[int, str] | None:
    """(status, text) when this caller may not read the metrics, None when they may: the token
    (``Authorization: Bearer …``) and/or an allowed network, both when both are set."""
    from . import clientip

    token, networks = settings.METRICS_TOKEN, settings.METRICS_ALLOW_NETWORKS
    if not token and not networks:
        return 404, NOT_FOUND
    if networks:
        parsed = clientip.parse_address(address)
        if parsed is None or not any(
            parsed.version == net.version and parsed in net for net in networks
        ):
            return 404, NOT_FOUND  # not from an allowed network: as if there were nothing here
    if token:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            return 401, TOKEN_REQUIRED
    return None


def metrics_view(request: HttpRequest) -> HttpResponse:
    from . import clientip

    refused = refusal(clientip.of_request(request), request.headers.get("Authorization", ""))
    if refused is None:
        return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
    # Plain text: this is answered before the session and the user are known
    # (config/middleware.py), so the site's 404 page, which names the user's teams, can't be.
    response = HttpResponse(refused[1], status=refused[0], content_type="text/plain")
    if refused[0] == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


# --- A worker's own endpoint (workers in containers of their own) ------------------------------


def serve_worker_metrics(port: int, host: str = "0.0.0.0"):  # noqa: S104 (scraped from outside)
    """Serve /metrics from a Celery worker, on a thread of its own (METRICS_WORKER_PORT).

    Where a worker shares a host and PROMETHEUS_MULTIPROC_DIR with a web process, the web's
    /metrics already includes it. In a container or pod of its own it has no web process
    beside it, so it answers Prometheus itself, with the same token / network rules (the
    caller's address is the socket's peer: no proxy stands in front of a scrape). The runs and
    queue gauges are left to the web processes, which read them from the database."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._answer(404, NOT_FOUND.encode(), "text/plain")
                return
            refused = refusal(self.client_address[0], self.headers.get("Authorization", ""))
            if refused is not None:
                self._answer(refused[0], refused[1].encode(), "text/plain")
                return
            self._answer(200, generate_latest(registry(scrape_time=False)), CONTENT_TYPE_LATEST)

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="metrics"')
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not worth a log line

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="tandem-metrics", daemon=True).start()
    return server


PROBES = ("/healthz", "/readyz", "/metrics")


class RequestMetricsMiddleware:
    """Times every request by the name of the URL pattern it matched (``route`` label: the
    resolver's view name such as ``assistant:conversation``, "unmatched" for a 404 no pattern
    took), never the raw path, whose ids would make a time series per object."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - start
        match = getattr(request, "resolver_match", None)
        if match:
            route = match.view_name or match.route
        elif request.path in PROBES:  # answered by config/middleware.py, before URL resolution
            route = request.path.lstrip("/")
        else:
            route = "unmatched"
        status = f"{response.status_code // 100}xx"
        safely(_observe_request, route, request.method or "", status, elapsed)
        return response


# --- Process life (multiprocess mode) ----------------------------------------------------------


def _observe_request(route: str, method: str, status: str, elapsed: float) -> None:
    HTTP_DURATION.labels(route, method, status).observe(elapsed)


def _pid_of(path: str) -> int | None:
    stem = os.path.basename(path).rsplit(".", 1)[0]
    try:
        return int(stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def process_started() -> None:
    """At the start of a web or worker process: clean the directory.

    If no process that wrote there is alive, the host (or container) has just started: every
    file is from before and is removed, so totals start again from zero, as Prometheus expects
    of a restart. Otherwise the living processes' files are kept, and the "live" gauges of dead
    ones (a worker killed -9 never said goodbye) are dropped, as ``mark_process_dead`` would
    have on a clean exit. Counters of dead processes are kept: they still add to the totals.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    os.makedirs(path, exist_ok=True)
    files = glob.glob(os.path.join(path, "*.db"))
    me = os.getpid()
    pids = {pid for f in files if (pid := _pid_of(f)) is not None and pid != me}
    living = {pid for pid in pids if _alive(pid)}
    for f in files:
        pid = _pid_of(f)
        if pid == me:
            continue
        if not living or (pid not in living and os.path.basename(f).startswith("gauge_live")):
            # Another process starting at the same time may have removed it.
            with contextlib.suppress(FileNotFoundError):
                os.remove(f)


def process_exiting(pid: int | None = None) -> None:
    """A process going away says so: its live gauges (open connections) stop counting."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        mark_process_dead(pid or os.getpid(), path)
