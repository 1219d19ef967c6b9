"""A run whose worker died is failed by the sweeper, keeping what had streamed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.utils import timezone

from assistant import streams
from assistant.models import Message, Run, RunStatus
from assistant.services import INTERRUPTED, fail_stale_runs, message_send, run_claim

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
