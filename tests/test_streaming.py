"""A reply streams over a real WebSocket from a real Celery worker, in order and complete."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

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
        # A frame carries deltas f..s when they waited for the socket (merged under load).
        seqs = [n for d in result["deltas"] for n in range(d.get("f", d["s"]), d["s"] + 1)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert "".join(d["x"] for d in result["deltas"]) == expected
        assert result["end"]["t"] == "run.completed"
    run = Run.objects.get(conversation=conversation)
    assert run.status == RunStatus.SUCCEEDED
    assert Message.objects.get(run=run).content == expected


def test_deltas_that_waited_for_a_socket_go_out_as_one_frame(stack, conversation, alice):
    """While the server is too busy to keep up (here: stopped), the deltas of a run that queue
    for a socket go out as one frame numbered f..s, their text in order, and what came after
    them comes after it; a socket that keeps up gets one frame per delta (above)."""
    from assistant import events

    daphne = stack.procs[1]
    conversation_id, run_id = str(conversation.uuid), str(uuid.uuid4())

    async def scenario() -> list[dict]:
        ws = await ws_connect(stack, conversation, alice)
        kinds = [json.loads(await ws.recv())["t"] for _ in range(2)]
        assert kinds == ["sync", "presence"]  # connected, and nothing else on its way
        daphne.send_signal(signal.SIGSTOP)
        try:
            for seq in range(1, 6):
                await events.publish_delta(conversation_id, run_id, seq, f"w{seq} ")
            await events.publish(conversation_id, {"t": "conversation.renamed", "title": "T"})
        finally:
            daphne.send_signal(signal.SIGCONT)
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        await ws.close()
        return frames

    merged, after = asyncio.run(scenario())
    assert merged == {"t": "d", "r": run_id, "f": 1, "s": 5, "x": "w1 w2 w3 w4 w5 "}
    assert after["t"] == "conversation.renamed"
