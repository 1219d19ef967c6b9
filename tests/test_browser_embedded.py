"""Embedded mode in a real browser: one server process, SQLite, the in-memory channel layer,
runs executed on the server's own event loop, and the built-in Demo model.

No PostgreSQL, no Redis, no Celery: the server is started the way ``make run`` starts it, with
those variables removed from its environment. A reply that streams into the page proves the
runs publish on the loop the in-memory channel layer lives on (a run on any other loop would
publish into a layer no consumer listens to).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect

from assistant.fakellm.script import demo_text
from tests.conftest import PASSWORD, ROOT, free_port, wait_for_port
from tests.test_browser import SAMPLER, partial_text, samples, send, sign_in

pytestmark = [pytest.mark.browser]

EMAIL = "owner@example.com"
DEMO_LABEL = "Demo model (scripted, not AI)"
# Everything that would point the server at the test services or a configured model.
REMOVED = (
    "DATABASE_URL",
    "REDIS_URL",
    "RUN_EXECUTOR",
    "LLM_MODEL",
    "LLM_API_BASE",
    "LLM_API_KEY",
    "TANDEM_MODE",
    "SECRET_KEY",
    "TEST_DATABASE_NAME",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
)


@dataclass
class Embedded:
    base_url: str
    log: Path


def _manage(env: dict, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stdout}{result.stderr}"


@pytest.fixture
def embedded(tmp_path, artifacts, request) -> Iterator[Embedded]:
    env = {key: value for key, value in os.environ.items() if key not in REMOVED}
    port = free_port()
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",  # not the test settings
            "TANDEM_DATA_DIR": str(tmp_path / "data"),
            "SITE_URL": f"http://127.0.0.1:{port}",
            "PYTHONUNBUFFERED": "1",
            "OWNER_PASSWORD": PASSWORD,
        }
    )
    _manage(env, "migrate", "--noinput", "-v0")
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "config.serve", "-b", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # The owner and the team are made while the server starts (SQLite takes both writers).
        _manage(env, "createuser", EMAIL, "--password-env", "OWNER_PASSWORD")
        _manage(env, "createteam", "demo", "--owner", EMAIL, "--name", "Demo team")
        wait_for_port(port, server, "the embedded server")
        yield Embedded(f"http://127.0.0.1:{port}", log)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            (artifacts / "server.log").write_text(log.read_text())


def test_embedded_server_streams_the_demo_reply(embedded, new_context):
    page = new_context("owner", base_url=embedded.base_url).new_page()
    sign_in(page, EMAIL)
    # Straight into the only team, then a new conversation.
    expect(page.get_by_test_id("team-switcher")).to_have_text("Demo team")
    page.get_by_test_id("new-conversation").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator(".chat-meta .model")).to_have_text(DEMO_LABEL)
    page.evaluate(SAMPLER)

    run_id = send(page, "hello")
    expected = demo_text("hello")
    first = partial_text(page, run_id, 0)
    second = partial_text(page, run_id, len(first))
    assert 0 < len(first) < len(second) < len(expected)

    bubble = page.locator(f"#run-{run_id}")
    expect(bubble).to_have_attribute("data-status", "succeeded", timeout=15_000)
    content = bubble.locator(".content.markdown")
    expect(content).to_contain_text("Hi! I'm the Demo model: a scripted stand-in, not an AI.")
    expect(content.locator("blockquote")).to_have_text("hello")
    expect(content.locator("pre")).to_contain_text('return f"Hello, {name}!"')
    expect(content).to_contain_text("so you can watch streaming work.")
    # Every moment of the stream showed a prefix of the reply, growing.
    seen = samples(page, run_id)
    assert len(seen) >= 3
    for text in seen:
        assert expected.startswith(text)
    # And it was saved: a reload shows the same reply from the database.
    page.reload()
    expect(page.locator(f"#run-{run_id} .content.markdown pre")).to_contain_text("def greet")
    assert "Model: Demo model (scripted, not AI)" in embedded.log.read_text()
