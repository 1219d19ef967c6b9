"""Slack through the production topology: a signed slash command reaches the real Daphne, the
real Celery worker handles it (conversation, run against the fake LLM over HTTP, the answer's
delivery task), and the answer lands in the thread of the stand-in Slack over real HTTP.

The other Slack tests run the tasks eagerly; this one proves the worker registers and runs
them with production settings (async-safety on, a separate broker)."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest
from django.conf import settings

from assistant.models import Role, RunStatus
from slack.models import Delivery, SlackThread
from tests import slack_standin
from tests.conftest import start_stack

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def slack_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    standin, server = slack_standin.start()
    # A broker of its own: the session's other stack must not take these tasks.
    base, _, db = settings.REDIS_URL.rpartition("/")
    redis_url = f"{base}/{(int(db or 0) + 1) % 16}"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    running = start_stack(
        tmp_path_factory.mktemp("slack-stack"),
        db_name=settings.DATABASES["default"]["NAME"],
        redis_url=redis_url,
        extra_env={
            "SLACK_API_BASE": standin.api,
            "SLACK_SIGNING_SECRET": slack_standin.SIGNING_SECRET,
        },
    )
    yield running, standin
    running.stop()
    server.shutdown()
    server.server_close()


def wait_for(predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_slash_command_answered_in_the_thread_by_the_worker(slack_stack, team, alice, bob):
    stack, standin = slack_stack
    standin.reset()
    standin.emails["U0BOB"] = bob.email
    slack_standin.bot_connection(team, alice, kinds=[])

    body = urllib.parse.urlencode(
        {
            "team_id": slack_standin.WORKSPACE,
            "user_id": "U0BOB",
            "channel_id": "C0DEV",
            "command": "/tandem",
            "text": "[[echo=1]] Summarise the release",
            "trigger_id": "trig-worker-1",
            "response_url": "https://hooks.slack.com/commands/T0ACME/1/abc",
        }
    ).encode()
    signed = slack_standin.sign(body)
    request = urllib.request.Request(
        stack.base_url + "/slack/commands",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": signed["HTTP_X_SLACK_REQUEST_TIMESTAMP"],
            "X-Slack-Signature": signed["HTTP_X_SLACK_SIGNATURE"],
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read())["text"] == "Working on it…"

    # The root message, then the answer in its thread, both posted by the worker.
    posts = wait_for(lambda: (p := standin.of("chat.postMessage")) and len(p) >= 2 and p)
    root, answer = posts[0], posts[1]
    thread = SlackThread.objects.get()
    assert root.args["channel"] == "C0DEV"
    assert answer.args["thread_ts"] == thread.thread_ts
    text = json.dumps(answer.args)
    assert "Summarise the release" in text  # the fake model echoes the prompt
    assert f"/t/acme/c/{thread.conversation.uuid}/" in text
    conversation = thread.conversation
    assert conversation.messages.get(role=Role.USER).author == bob
    run = conversation.runs.get()
    assert run.status == RunStatus.SUCCEEDED
    # Delivered once each, recorded with Slack's ts.
    assert all(d.ts for d in Delivery.objects.all())
    time.sleep(1)
    assert len(standin.of("chat.postMessage")) == 2
