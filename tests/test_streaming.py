"""A reply streams over a real WebSocket from a real Celery worker, in order and complete."""

from __future__ import annotations

import asyncio
import json

import pytest

from assistant.fakellm.script import scripted_tokens
from assistant.models import Message, Run, RunStatus
from assistant.services import message_send
from tests.helpers import collect_run, ws_connect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_it_streams_a_reply_to_every_viewer(stack, conversation, alice, bob):
    async def scenario():
        ws_alice = await ws_connect(stack, conversation, alice)
        ws_bob = await ws_connect(stack, conversation, bob)
        for ws in (ws_alice, ws_bob):
            assert json.loads(await ws.recv())["t"] == "sync"
        await asyncio.to_thread(
            message_send,
            conversation=conversation,
            author=alice,
            content="Hello [[tokens=60 delay_ms=5]]",
        )
        results = await asyncio.gather(collect_run(ws_alice), collect_run(ws_bob))
        await ws_alice.close()
        await ws_bob.close()
        return results

    results = asyncio.run(scenario())
    expected = "".join(scripted_tokens(60))
    for result in results:
        seqs = [d["s"] for d in result["deltas"]]
        assert seqs == list(range(1, len(seqs) + 1))
        assert "".join(d["x"] for d in result["deltas"]) == expected
        assert result["end"]["t"] == "run.completed"
    run = Run.objects.get(conversation=conversation)
    assert run.status == RunStatus.SUCCEEDED
    assert Message.objects.get(run=run).content == expected
