"""A run whose worker died is failed by the sweepers, keeping what had streamed: at once when
the worker it names is gone (its alive key expired), else when its heartbeat goes stale."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from assistant import streams
from assistant.models import Message, Run, RunStatus
from assistant.services import (
    INTERRUPTED,
    conversation_create,
    fail_orphaned_runs,
    fail_stale_runs,
    message_send,
    run_claim,
)
from config import readiness

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_fails_a_run_without_heartbeat_and_keeps_the_partial_text(conversation, alice, no_runs):
    sent = message_send(conversation=conversation, author=alice, content="hi")
    run_id = str(sent.run.uuid)
    run_claim(run_id)
    asyncio.run(streams.append(run_id, 1, "The first half"))
    Run.objects.filter(pk=sent.run.pk).update(heartbeat=timezone.now() - timedelta(minutes=5))

    assert fail_stale_runs() == 1

    sent.run.refresh_from_db()
    assert sent.run.status == RunStatus.FAILED
    assert sent.run.error == INTERRUPTED
    assert Message.objects.get(run=sent.run).content == "The first half"
    assert fail_stale_runs() == 0  # once


def test_it_leaves_a_live_run_alone(conversation, alice, no_runs):
    sent = message_send(conversation=conversation, author=alice, content="hi")
    run_claim(str(sent.run.uuid))
    assert fail_stale_runs() == 0
    sent.run.refresh_from_db()
    assert sent.run.status == RunStatus.RUNNING


def test_it_leaves_queued_runs_alone(conversation, alice, no_runs):
    sent = message_send(conversation=conversation, author=alice, content="hi")
    Run.objects.filter(pk=sent.run.pk).update(created=timezone.now() - timedelta(hours=1))
    assert fail_stale_runs() == 0
    sent.run.refresh_from_db()
    assert sent.run.status == RunStatus.QUEUED


def _claimed_by(conversation, alice, worker: str) -> Run:
    sent = message_send(conversation=conversation, author=alice, content="hi")
    run_claim(str(sent.run.uuid))
    Run.objects.filter(pk=sent.run.pk).update(worker=worker)
    return sent.run


def test_a_run_whose_worker_is_gone_is_failed_at_once_with_its_partial_text(
    conversation, alice, team, no_runs
):
    suffix = uuid.uuid4().hex[:8]
    tag = readiness.redis_tag()
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(readiness.alive_key(f"alive-{suffix}:1"), "1", ex=60)
    alive = f"alive-{suffix}:1@{tag}"
    try:
        gone_run = _claimed_by(conversation, alice, f"gone-{suffix}:2@{tag}")
        # A worker of another Redis is not judged here: its key would be over there.
        elsewhere = _claimed_by(
            conversation_create(team=team, author=alice), alice, f"gone-{suffix}:3@0ther000"
        )
        asyncio.run(streams.append(str(gone_run.uuid), 1, "Streamed before the kill"))
        other = conversation_create(team=team, author=alice)
        live_run = _claimed_by(other, alice, alive)
        # The heartbeat is fresh: the stale sweep would wait; the worker's missing key is enough.
        assert fail_stale_runs() == 0
        assert fail_orphaned_runs() == 1
        assert fail_orphaned_runs() == 0  # once; the live worker's run is left alone
        live_run.refresh_from_db()
        assert live_run.status == RunStatus.RUNNING
        elsewhere.refresh_from_db()
        assert elsewhere.status == RunStatus.RUNNING
    finally:
        client.delete(readiness.alive_key(f"alive-{suffix}:1"))
        client.close()

    gone_run.refresh_from_db()
    assert gone_run.status == RunStatus.FAILED and gone_run.error == INTERRUPTED
    assert Message.objects.get(run=gone_run).content == "Streamed before the kill"


def test_runs_that_name_no_worker_are_left_to_the_heartbeat_sweep(conversation, alice, no_runs):
    run = _claimed_by(conversation, alice, "")
    assert fail_orphaned_runs() == 0
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_a_claim_names_the_worker_only_on_a_worker(conversation, alice, no_runs, monkeypatch):
    sent = message_send(conversation=conversation, author=alice, content="hi")
    assert run_claim(str(sent.run.uuid)).worker == ""  # not a Celery worker: nothing to watch
    other = message_send(
        conversation=conversation_create(team=conversation.team, author=alice),
        author=alice,
        content="hi",
    )
    monkeypatch.setattr(readiness, "_this_worker", "host-a:42")
    assert run_claim(str(other.run.uuid)).worker == f"host-a:42@{readiness.redis_tag()}"
