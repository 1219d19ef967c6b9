"""Live share links over the real stack (Daphne, a Celery worker, the fake provider): who may
open the share's WebSocket, what a viewer receives (redacted, no presence), and how revoking,
expiry and leaving the team cut a viewer off."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
import websockets
from django.conf import settings
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus

from assistant import events, streams
from assistant.fakellm.script import scripted_tokens
from assistant.models import Message, Role, Run, RunStatus
from assistant.services import message_send
from sharing import ratelimit, services
from sharing.consumers import CLOSE_NOT_FOUND
from sharing.models import ShareLink
from sharing.redact import MARK
from tests.helpers import session_cookie, ws_connect
from tests.test_sharing import GITHUB_TOKEN, allow_public, link_of, share

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def fresh_limits():
    ratelimit.reset()
    yield
    ratelimit.reset()


async def share_ws(stack, token: str, user=None, *, origin: str | None = None):
    headers = {"Origin": origin or stack.base_url}
    if user is not None:
        # A session is made with the ORM: in a thread, never on the scenario's event loop.
        cookie = await asyncio.to_thread(session_cookie, user)
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={cookie}"
    return await websockets.connect(
        f"{stack.ws_url}/ws/share/{token}/", additional_headers=headers, open_timeout=10
    )


async def next_frame(ws, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_closed(ws, timeout: float = 10) -> tuple[int | None, list[dict]]:
    """Read until the server closes the socket: (close code, frames read before)."""
    frames: list[dict] = []
    try:
        while True:
            frames.append(await next_frame(ws, timeout))
    except ConnectionClosed:
        pass
    return ws.close_code, frames


def close_code_of(stack, token: str, user=None) -> int | None:
    async def attempt():
        ws = await share_ws(stack, token, user)
        code, _ = await until_closed(ws)
        return code

    return asyncio.run(attempt())


def test_a_live_viewer_sees_a_reply_stream_in_and_never_presence(stack, conversation, alice):
    token = share(conversation, alice, audience="public", mode="live")

    async def scenario():
        member = await ws_connect(stack, conversation, alice)  # makes presence events
        viewer = await share_ws(stack, token)
        assert await next_frame(viewer) == {"t": "sync", "runs": []}
        await asyncio.to_thread(
            message_send,
            conversation=conversation,
            author=alice,
            content="Hello [[tokens=40 delay_ms=10]]",
        )
        frames = []
        while not frames or frames[-1]["t"] != "run.completed":
            frames.append(await next_frame(viewer, 30))
        await viewer.send('{"t": "ping"}')
        while (frame := await next_frame(viewer))["t"] != "pong":
            frames.append(frame)
        await viewer.close()
        await member.close()
        return frames

    frames = asyncio.run(scenario())
    kinds = {frame["t"] for frame in frames}
    assert kinds <= {"message.created", "run.queued", "run.started", "d", "run.completed"}
    assert "presence" not in kinds
    text = "".join(scripted_tokens(40))
    deltas = [frame for frame in frames if frame["t"] == "d"]
    assert [d["s"] for d in deltas] == list(range(1, len(deltas) + 1))
    # Streamed up to the last word (held back until the reply is whole)...
    assert "".join(d["x"] for d in deltas) == text[: text.rfind(" ") + 1]
    # ...and the finished reply arrives rendered, whole.
    assert text in frames[-1]["html"]
    created = next(frame for frame in frames if frame["t"] == "message.created")
    assert "Team member" in created["html"] and "Hello" in created["html"]
    assert "alice" not in json.dumps(frames).lower()
    assert 'data-testid="stop"' not in json.dumps(frames)


def test_revoking_cuts_live_viewers_off_at_once(stack, conversation, alice, bob):
    token = share(conversation, alice, mode="live")

    async def scenario():
        viewer = await share_ws(stack, token, bob)
        assert (await next_frame(viewer))["t"] == "sync"
        await asyncio.to_thread(lambda: services.revoke_link(link=link_of(token), user=alice))
        code, _ = await until_closed(viewer, timeout=30)
        return code

    # The revocation closes the socket, with its own code (how fast is for bench/, not here).
    assert asyncio.run(scenario()) == services.CLOSE_REVOKED
    assert close_code_of(stack, token, bob) == CLOSE_NOT_FOUND


def test_a_live_link_closes_when_it_expires(stack, conversation, alice):
    token = share(conversation, alice, audience="public", mode="live", expiry="1h")
    link = ShareLink.objects.filter(pk=link_of(token).pk)

    async def scenario():
        # The server's clock runs on its own: a viewer must connect before the link expires,
        # so a link that expired first (a slow connection) is tried again with more time.
        for lead in (1.5, 5, 20):
            soon = timezone.now() + timedelta(seconds=lead)
            await asyncio.to_thread(link.update, expires_at=soon)
            viewer = await share_ws(stack, token)
            try:
                assert (await next_frame(viewer, timeout=30))["t"] == "sync"
            except ConnectionClosed:
                continue
            code, _ = await until_closed(viewer, timeout=lead + 30)
            return code, soon
        raise AssertionError("no viewer connected before the link expired")

    code, soon = asyncio.run(scenario())
    assert code == services.CLOSE_EXPIRED
    assert timezone.now() >= soon
    # And once expired, a new connection is told so at once.
    assert close_code_of(stack, token) == services.CLOSE_EXPIRED


def test_who_may_open_a_share_socket(stack, conversation, alice, bob, charlie, other_team):
    snapshot = share(conversation, alice, audience="public")
    team_live = share(conversation, alice, mode="live")
    assert close_code_of(stack, snapshot) == CLOSE_NOT_FOUND  # a snapshot has no live side
    assert close_code_of(stack, "x" * 43) == CLOSE_NOT_FOUND
    assert close_code_of(stack, team_live[:-2]) == CLOSE_NOT_FOUND
    assert close_code_of(stack, team_live) == CLOSE_NOT_FOUND  # signed out
    assert close_code_of(stack, team_live, charlie) == CLOSE_NOT_FOUND  # not in the team

    async def member_then_cross_origin():
        ws = await share_ws(stack, team_live, bob)
        first = await next_frame(ws)
        await ws.close()
        try:
            await share_ws(stack, team_live, bob, origin="http://evil.example")
        except InvalidStatus as exc:
            return first, exc.response.status_code
        return first, None

    first, cross_origin = asyncio.run(member_then_cross_origin())
    assert first["t"] == "sync"
    assert cross_origin == 403


def test_guessing_over_the_socket_is_rate_limited_too(stack, conversation, alice, settings):
    from sharing.consumers import CLOSE_RATE_LIMITED

    allow_public(conversation.team)
    good = share(conversation, alice, audience="public", mode="live")
    # The server counts per minute of its own clock, which no test holds still: a round that
    # a minute turned in the middle of is started over (the next has the whole minute).
    for _ in range(2):
        ratelimit.reset()
        minute = int(time.time() // ratelimit.WINDOW_SECONDS)
        for _ in range(ratelimit.limit()):
            assert close_code_of(stack, "y" * 43) == CLOSE_NOT_FOUND
        code = close_code_of(stack, good)
        if int(time.time() // ratelimit.WINDOW_SECONDS) == minute:
            break
    assert code == CLOSE_RATE_LIMITED


def test_a_member_removed_from_the_team_is_cut_off(stack, conversation, alice, bob):
    from accounts.selectors import membership_for
    from accounts.services import membership_remove

    token = share(conversation, alice, mode="live")

    async def scenario():
        viewer = await share_ws(stack, token, bob)
        assert (await next_frame(viewer))["t"] == "sync"
        await asyncio.to_thread(
            lambda: membership_remove(
                actor=membership_for(alice, "acme"), target=membership_for(bob, "acme")
            )
        )
        return await until_closed(viewer, timeout=5)

    code, _ = asyncio.run(scenario())
    assert code == CLOSE_NOT_FOUND


def test_a_secret_split_across_deltas_never_reaches_a_viewer(stack, conversation, alice):
    """Deltas as the agent publishes them, with a token cut in three: the member sees them as
    they are, the share viewer never a piece of the token."""
    message = Message.objects.create(
        conversation=conversation, role=Role.USER, author=alice, content="Show the token"
    )
    run = Run.objects.create(
        conversation=conversation, user_message=message, status=RunStatus.RUNNING
    )
    run_id, conversation_id = str(run.uuid), str(conversation.uuid)
    token = share(conversation, alice, audience="public", mode="live")
    pieces = ["The token is gh", GITHUB_TOKEN[2:14], GITHUB_TOKEN[14:], " so rotate it", " now"]

    async def scenario():
        member = await ws_connect(stack, conversation, alice)
        viewer = await share_ws(stack, token)
        sync = await next_frame(viewer)
        assert sync == {"t": "sync", "runs": [{"run": run_id, "seq": 0, "text": ""}]}
        for seq, piece in enumerate(pieces, start=1):
            await streams.append(run_id, seq, piece)
            await events.publish_delta(conversation_id, run_id, seq, piece)
        seen, raw = [], []
        while len(seen) < len(pieces):
            frame = await next_frame(viewer)
            if frame["t"] == "d":
                seen.append(frame)
        while not raw or raw[-1][0] < len(pieces):  # a member's frame may carry deltas f..s
            frame = await next_frame(member)
            if frame["t"] == "d":
                raw.append((frame["s"], frame["x"]))
        await viewer.close()
        await member.close()
        return seen, raw

    try:
        seen, raw = asyncio.run(scenario())
    finally:
        asyncio.run(streams.discard(run_id))
    assert "".join(x for _, x in raw) == "".join(pieces)  # the member's stream is untouched
    assert [frame["s"] for frame in seen] == [1, 2, 3, 4, 5]
    shown = "".join(frame["x"] for frame in seen)
    assert shown == f"The token is {MARK} so rotate it "
    for frame in seen:
        for fragment in (GITHUB_TOKEN[:6], GITHUB_TOKEN[4:12], GITHUB_TOKEN[14:22]):
            assert fragment not in frame["x"]


def test_client_frames_are_ignored(stack, conversation, alice):
    token = share(conversation, alice, audience="public", mode="live")

    async def scenario():
        viewer = await share_ws(stack, token)
        assert (await next_frame(viewer))["t"] == "sync"
        for text in (
            "junk",
            '{"t": "message", "content": "hi"}',
            '{"t": "cancel", "run": "x"}',
            json.dumps({"t": "ping", "pad": "x" * 10_000}),
        ):
            await viewer.send(text)
        await viewer.send('{"t": "resync"}')
        assert (await next_frame(viewer))["t"] == "sync"
        await viewer.send('{"t": "ping"}')
        assert (await next_frame(viewer)) == {"t": "pong"}
        await viewer.close()

    asyncio.run(scenario())
    assert not Message.objects.filter(content="hi").exists()
