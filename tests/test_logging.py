"""LOG_FORMAT=json: one JSON object per line, carrying the request id and the team, user,
conversation and run where known. The default stays the human-readable line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from config import logs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def json_lines():
    """The JSON formatter and context filter on a handler of this test's own."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_a_line_is_one_json_object_with_the_bound_ids(json_lines):
    log = logging.getLogger("tandem.test")
    with logs.bind(team="acme", run="r-1", conversation=None):
        log.warning("first %s", "event")
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed")
    log.info("outside")
    first, failed, outside = json_lines()
    assert first["message"] == "first event"
    assert first["level"] == "WARNING" and first["logger"] == "tandem.test"
    assert first["team"] == "acme" and first["run"] == "r-1"
    assert "conversation" not in first and "request_id" not in first
    assert first["time"].endswith("Z")
    assert "ValueError: boom\nsecond line" in failed["exc"]
    assert "team" not in outside and "run" not in outside


def test_runs_on_one_loop_keep_their_own_ids(json_lines):
    log = logging.getLogger("tandem.test")

    async def run(run_id: str) -> None:
        logs.bind_here(run=run_id)
        await asyncio.sleep(0)
        log.info("step of %s", run_id)
        await asyncio.sleep(0)
        log.info("end of %s", run_id)

    async def both() -> None:
        await asyncio.gather(asyncio.create_task(run("a")), asyncio.create_task(run("b")))

    asyncio.run(both())
    for line in json_lines():
        assert line["message"].endswith(f"of {line['run']}")
    assert "run" not in logs.current()


@pytest.mark.django_db
def test_a_request_gets_an_id_and_its_line_names_team_user_conversation(
    json_lines, client, alice, conversation, settings
):
    settings.LOG_FORMAT = "json"
    client.force_login(alice)
    url = f"/t/{conversation.team.slug}/c/{conversation.uuid}/"
    response = client.get(url)
    assert response.status_code == 200
    request_id = response["X-Request-ID"]
    assert len(request_id) == 32
    (line,) = [line for line in json_lines() if line["logger"] == "tandem.request"]
    assert line["request_id"] == request_id
    assert line["team"] == conversation.team.slug
    assert line["conversation"] == str(conversation.uuid)
    assert line["user"] == str(alice.pk)
    assert line["method"] == "GET" and line["path"] == url and line["status"] == 200
    assert line["duration_ms"] >= 0


@pytest.mark.django_db
def test_text_mode_writes_no_request_lines_daphnes_access_log_does(json_lines, client):
    assert client.get("/accounts/login/").has_header("X-Request-ID")
    assert [line for line in json_lines() if line["logger"] == "tandem.request"] == []


@pytest.mark.django_db
def test_djangos_own_error_lines_carry_the_request_id(json_lines, client):
    response = client.get("/no-such-page/", HTTP_X_REQUEST_ID="feedfacefeedface")
    assert response.status_code == 404
    (line,) = [line for line in json_lines() if line["logger"] == "django.request"]
    assert line["request_id"] == "feedfacefeedface"


@pytest.mark.django_db
def test_the_proxys_request_id_is_kept_only_when_well_formed(json_lines):
    kept = Client().get("/accounts/login/", HTTP_X_REQUEST_ID="0123456789abcdef0123456789abcdef")
    assert kept["X-Request-ID"] == "0123456789abcdef0123456789abcdef"
    replaced = Client().get("/accounts/login/", HTTP_X_REQUEST_ID='x"}\n{"level":"forged"')
    assert replaced["X-Request-ID"] != 'x"}\n{"level":"forged"'
    assert len(replaced["X-Request-ID"]) == 32
    assert all(line["level"] != "forged" for line in json_lines())


@pytest.mark.django_db
def test_probes_are_not_logged_when_fine(json_lines, settings):
    settings.LOG_FORMAT = "json"
    settings.RUN_EXECUTOR = "inprocess"
    assert Client().get("/healthz").status_code == 200
    assert Client().get("/readyz").status_code == 200
    assert [line for line in json_lines() if line["logger"] == "tandem.request"] == []


SHOW = """
import logging, django
django.setup()
logging.getLogger("tandem.check").warning("hello")
"""


def _run_with(log_format: str | None) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "TANDEM_MODE": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": "postgres://tandem@127.0.0.1:5432/tandem",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "ALLOWED_HOSTS": "tandem.example",
        "SANDBOX_CGROUPS": "off",
        "WORKSPACE_QUOTA_MB": "0",
    }
    if log_format is not None:
        env["LOG_FORMAT"] = log_format
    return subprocess.run(
        [sys.executable, "-c", SHOW], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_setting_switches_the_format_and_refuses_nonsense():
    as_json = _run_with("json")
    lines = [json.loads(line) for line in as_json.stderr.splitlines() if line.strip()]
    assert {"level": "WARNING", "logger": "tandem.check", "message": "hello"}.items() <= lines[
        -1
    ].items()
    text = _run_with(None)
    assert text.stderr.splitlines()[-1].endswith("WARNING tandem.check: hello")
    wrong = _run_with("yaml")
    assert wrong.returncode != 0
    assert "LOG_FORMAT must be 'text' or 'json', got 'yaml'" in wrong.stderr


@pytest.mark.django_db(transaction=True)
def test_a_runs_lines_name_it_its_conversation_team_and_user(
    json_lines, settings, no_runs, inline_jobs, alice, conversation
):
    """A reply executed on the worker loop (as a Celery worker does): its own lines carry the
    run, conversation, team and person who asked, and nothing else's do."""
    from assistant import services
    from assistant.runner import run_on_worker_loop

    settings.LLM_MODEL = ""  # the scripted demo model
    run = services.message_send(conversation=conversation, author=alice, content="Hello").run
    run_on_worker_loop(str(run.uuid)).result(60)
    run.refresh_from_db()
    assert run.status == "succeeded"
    mine = [line for line in json_lines() if line.get("run") == str(run.uuid)]
    assert [line["message"] for line in mine if line["logger"] == "assistant.agent"] == [
        "Run started (Demo model (scripted, not AI))",
        "Run ended: succeeded",
    ]
    for line in mine:
        assert line["conversation"] == str(conversation.uuid)
        assert line["team"] == conversation.team.slug
        assert line["user"] == str(alice.pk)
