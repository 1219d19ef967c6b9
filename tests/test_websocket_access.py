"""Who may open a conversation's WebSocket, on the real Daphne: members only, same origin only,
and a client's junk doesn't break the connection."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import websockets
from django.conf import settings
from websockets.exceptions import InvalidStatus

from tests.helpers import session_cookie, ws_connect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


async def connect(stack, conversation_id, cookie: str | None, origin: str | None = None):
    headers = {"Origin": origin or stack.base_url}
    if cookie:
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={cookie}"
    return await websockets.connect(
        f"{stack.ws_url}/ws/conversations/{conversation_id}/",
        additional_headers=headers,
        open_timeout=10,
    )


def refused(stack, conversation_id, cookie: str | None, origin: str | None = None) -> int:
    """The HTTP status the handshake was refused with (fails the test if it was accepted)."""

    async def attempt():
        try:
            ws = await connect(stack, conversation_id, cookie, origin)
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        pytest.fail("the WebSocket handshake was accepted")

    return asyncio.run(attempt())


async def first_frame(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


def test_it_rejects_anonymous(stack, conversation):
    assert refused(stack, conversation.uuid, None) == 403


def test_it_rejects_outsider(stack, conversation, charlie, other_team):
    assert refused(stack, conversation.uuid, session_cookie(charlie)) == 403


def test_it_rejects_a_conversation_that_does_not_exist(stack, alice, team):
    assert refused(stack, uuid.uuid4(), session_cookie(alice)) == 403


def test_it_rejects_a_cross_origin_handshake_even_for_a_member(stack, conversation, bob):
    assert refused(stack, conversation.uuid, session_cookie(bob), "http://evil.example") == 403


def test_it_accepts_a_member_and_sends_sync_first(stack, conversation, alice, bob):
    async def scenario():
        frames = []
        for user in (alice, bob):
            ws = await ws_connect(stack, conversation, user)
            frames.append(await first_frame(ws))
            await ws.close()
        return frames

    for frame in asyncio.run(scenario()):
        assert frame == {"t": "sync", "runs": []}


def test_it_rejects_a_member_once_removed(stack, conversation, alice, bob):
    from accounts.selectors import membership_for
    from accounts.services import membership_remove

    cookie = session_cookie(bob)

    async def opens() -> dict:
        ws = await connect(stack, conversation.uuid, cookie)
        frame = await first_frame(ws)
        await ws.close()
        return frame

    assert asyncio.run(opens())["t"] == "sync"
    membership_remove(actor=membership_for(alice, "acme"), target=membership_for(bob, "acme"))
    # The same session, still signed in, is now an outsider.
    assert refused(stack, conversation.uuid, cookie) == 403


def test_it_survives_malformed_and_oversized_frames(stack, conversation, bob):
    junk = [
        "not json",
        "[1, 2, 3]",
        '"a string"',
        "{}",
        '{"t": 42}',
        '{"t": "no-such-type", "x": {"y": [1]}}',
        "{" * 5000,
        json.dumps({"t": "ping", "pad": "x" * 100_000}),  # over MAX_CLIENT_FRAME: ignored
        "",
    ]

    async def scenario():
        ws = await ws_connect(stack, conversation, bob)
        assert (await first_frame(ws))["t"] == "sync"
        for text in junk:
            await ws.send(text)
        await ws.send(b"\x00\xff binary")
        await ws.send('{"t": "ping"}')
        replies = []
        while True:
            frame = await first_frame(ws)
            if frame["t"] == "pong":
                break
            replies.append(frame["t"])
        # Still usable afterwards: a resync gets a fresh snapshot.
        await ws.send('{"t": "resync"}')
        while (frame := await first_frame(ws))["t"] != "sync":
            replies.append(frame["t"])
        await ws.close()
        return replies

    replies = asyncio.run(scenario())
    # Nothing but presence updates came back for the junk (the oversized ping got no pong).
    assert set(replies) <= {"presence"}


def test_it_stops_pushing_to_a_member_once_removed(stack, conversation, alice, bob, no_runs):
    from accounts.selectors import membership_for
    from accounts.services import membership_remove
    from assistant.services import message_send

    async def scenario() -> list[str]:
        ws = await ws_connect(stack, conversation, bob)
        assert (await first_frame(ws))["t"] == "sync"
        await asyncio.to_thread(
            membership_remove,
            actor=await asyncio.to_thread(membership_for, alice, "acme"),
            target=await asyncio.to_thread(membership_for, bob, "acme"),
        )
        await asyncio.to_thread(
            message_send, conversation=conversation, author=alice, content="After Bob left"
        )
        seen = []
        try:
            while True:
                seen.append(await asyncio.wait_for(ws.recv(), 2))
        except (TimeoutError, websockets.ConnectionClosed):
            pass
        await ws.close()
        return seen

    seen = asyncio.run(scenario())
    assert not any("After Bob left" in frame for frame in seen), seen
