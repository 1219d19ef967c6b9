"""Prometheus metrics: /metrics is protected, adds up every process of a host (a counter
incremented in the Celery worker shows in the web process's answer), and after a real run
through the fake provider names what an operator watches."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from assistant.models import Run, RunStatus
from assistant.services import message_send
from config import metrics
from tests.conftest import STACK_METRICS_TOKEN
from tests.helpers import collect_run, ws_connect


def _networks(*cidrs: str):
    import ipaddress

    return [ipaddress.ip_network(c) for c in cidrs]


@pytest.mark.parametrize(
    "token, networks, headers, status",
    [
        ("", [], {}, 404),  # neither configured: not there at all
        ("s3cret", [], {}, 401),
        ("s3cret", [], {"HTTP_AUTHORIZATION": "Bearer wrong"}, 401),
        ("s3cret", [], {"HTTP_AUTHORIZATION": "Basic s3cret"}, 401),
        ("s3cret", [], {"HTTP_AUTHORIZATION": "Bearer s3cret"}, 200),
        ("", ["10.0.0.0/8"], {}, 404),  # the test client is 127.0.0.1: not allowed
        ("", ["127.0.0.0/8"], {}, 200),
        ("s3cret", ["127.0.0.1/32"], {}, 401),  # both set: both must hold
        ("s3cret", ["10.0.0.0/8"], {"HTTP_AUTHORIZATION": "Bearer s3cret"}, 404),
        ("s3cret", ["127.0.0.1/32"], {"HTTP_AUTHORIZATION": "Bearer s3cret"}, 200),
    ],
)
@pytest.mark.django_db
def test_metrics_are_protected(client, token, networks, headers, status):
    with override_settings(METRICS_TOKEN=token, METRICS_ALLOW_NETWORKS=_networks(*networks)):
        response = client.get("/metrics", **headers)
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
    if status == 200:
        body = response.content.decode()
        assert "# TYPE tandem_runs gauge" in body
        assert 'tandem_runs{status="queued"}' in body


def test_the_settings_refuse_a_bad_allowlist():
    env = {**os.environ, "METRICS_ALLOW_IPS": "10.0.0.0/8,not-an-address"}
    code = "import config.settings"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "METRICS_ALLOW_IPS" in result.stderr


def test_start_up_clears_what_dead_processes_left(tmp_path, monkeypatch):
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = os.getppid()  # the process that started pytest: alive for the whole run
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in (f"counter_{dead.pid}.db", f"gauge_livesum_{dead.pid}.db"):
        (tmp_path / name).write_bytes(b"")
    metrics.process_started()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nobody alive: a fresh start
    for name in (f"counter_{dead.pid}.db", f"gauge_livesum_{dead.pid}.db", f"counter_{alive}.db"):
        (tmp_path / name).write_bytes(b"")
    metrics.process_started()
    # A process still runs: dead ones' counters still count; their open connections don't.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"counter_{alive}.db"]
    )


def _scrape(stack, token: str = STACK_METRICS_TOKEN) -> dict[str, dict]:
    response = httpx.get(
        f"{stack.base_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    families: dict[str, dict] = {}
    for family in text_string_to_metric_families(response.text):
        families[family.name] = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for sample in family.samples
        }
    return families


def _value(families, family: str, sample: str, **labels) -> float:
    wanted = tuple(sorted(labels.items()))
    return families.get(family, {}).get((sample, wanted), 0.0)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_on_the_worker_shows_in_the_webs_metrics(stack, conversation, alice):
    """The LLM call, its tokens and the delta lag are counted in the Celery worker process;
    the web process answers /metrics from every process's files."""
    model = stack.env["LLM_MODEL"]
    before = _scrape(stack)
    calls_before = _value(
        before, "tandem_llm_calls", "tandem_llm_calls_total", model=model, outcome="ok"
    )

    async def scenario():
        ws = await ws_connect(stack, conversation, alice)
        assert json.loads(await ws.recv())["t"] == "sync"
        during = await asyncio.to_thread(_scrape, stack)
        await asyncio.to_thread(
            message_send, conversation=conversation, author=alice, content="Hi [[tokens=20]]"
        )
        result = await collect_run(ws, timeout=60)  # only a guard against a hang
        await ws.close()
        return during, result

    during, result = asyncio.run(scenario())
    assert result["end"]["t"] == "run.completed"
    assert Run.objects.get(conversation=conversation).status == RunStatus.SUCCEEDED
    assert (
        _value(
            during,
            "tandem_websocket_connections",
            "tandem_websocket_connections",
            kind="conversation",
        )
        >= 1
    )
    after = _scrape(stack)
    calls = _value(after, "tandem_llm_calls", "tandem_llm_calls_total", model=model, outcome="ok")
    assert calls == calls_before + 1
    assert (
        _value(
            after, "tandem_llm_tokens", "tandem_llm_tokens_total", model=model, kind="completion"
        )
        > 0
    )
    assert (
        _value(
            after,
            "tandem_llm_latency_seconds",
            "tandem_llm_latency_seconds_count",
            model=model,
            outcome="ok",
        )
        >= 1
    )
    assert _value(after, "tandem_delta_lag_seconds", "tandem_delta_lag_seconds_count") >= len(
        result["deltas"]
    )
    routes = {
        dict(labels).get("route") for _, labels in after["tandem_http_request_duration_seconds"]
    }
    assert "metrics" in routes  # the scrapes before this one
    # Route names or URL patterns, never a path with an id in it.
    assert all("/" not in route or "<" in route for route in routes), routes
    assert ("tandem_runs", (("status", "queued"),)) in after["tandem_runs"]
    assert ("tandem_celery_queue_length", (("queue", "celery"),)) in after[
        "tandem_celery_queue_length"
    ]
    # Every family Tandem exports is declared; those this run touched have samples.
    assert {"tandem_llm_calls", "tandem_delta_lag_seconds", "tandem_runs"} <= set(after)
    assert Path(stack.env["PROMETHEUS_MULTIPROC_DIR"]).is_dir()


def test_the_grafana_dashboard_uses_only_metrics_tandem_exports():
    import re

    from django.conf import settings

    dashboard = json.loads((settings.BASE_DIR / "deploy/grafana/tandem.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs and all(expr.strip() for expr in exprs)
    named = set()
    for expr in exprs:
        found = re.findall(r"\b(tandem_[a-z_]+)", expr)
        assert found, f"no Tandem metric in {expr!r}"
        named |= {re.sub(r"_(bucket|count|sum|total|created)$", "", name) for name in found}
    assert named - metrics.EXPORTED == set(), "the dashboard names metrics Tandem doesn't export"
    assert metrics.EXPORTED - named == set(), "a metric Tandem exports has no panel"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_a_worker_in_its_own_container_answers_prometheus_itself():
    from tests.conftest import free_port

    port = free_port()
    server = metrics.serve_worker_metrics(port, host="127.0.0.1")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with override_settings(METRICS_TOKEN="w0rker", METRICS_ALLOW_NETWORKS=[]):
            assert httpx.get(url, timeout=5).status_code == 401
            assert httpx.get(url.replace("/metrics", "/other"), timeout=5).status_code == 404
            answer = httpx.get(url, headers={"Authorization": "Bearer w0rker"}, timeout=5)
        with override_settings(METRICS_TOKEN="", METRICS_ALLOW_NETWORKS=[]):
            assert httpx.get(url, timeout=5).status_code == 404  # off unless configured
    finally:
        server.shutdown()
    assert answer.status_code == 200
    assert "tandem_http_request_duration_seconds" in answer.text
    assert "tandem_runs" not in answer.text  # the web processes report those
