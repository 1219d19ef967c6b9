"""Every way a membership or an account ends cuts the person off at once, on the real stack
(Daphne, a Celery worker, Redis): their conversation WebSocket, their team-only share socket
and their API event stream close when it happens — not at the next reconnect, nor at the
stream's first 15 s check. Ways: the Members page, the Django admin's deletion of the
membership (or the ORM), deactivating the person, deleting the person."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.exceptions import ConnectionClosed

from accounts.models import Membership
from accounts.selectors import membership_for
from accounts.services import membership_remove
from tests.api_client import make_key
from tests.helpers import ws_connect
from tests.test_api_stream import Stream, client_for, open_stream
from tests.test_sharing import share
from tests.test_sharing_live import share_ws

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Seconds to wait for the close: generous for a loaded machine, and still before the event
# stream (opened just before) makes its first 15 s access check. Not a speed claim.
PROMPT = 10.0


def remove_on_members_page(team, bob):
    membership_remove(actor=membership_for_owner(team), target=membership_for(bob, team.slug))


def membership_for_owner(team):
    return Membership.objects.get(team=team, role="owner")


def delete_membership(team, bob):
    # What the Django admin's inline (or a shell) does: the row goes, no service involved.
    Membership.objects.get(team=team, user=bob).delete()


def deactivate(team, bob):
    bob.is_active = False
    bob.save()


def delete_person(team, bob):
    bob.delete()


WAYS = [remove_on_members_page, delete_membership, deactivate, delete_person]


async def closed_within(ws, seconds: float) -> int | None:
    """The close code if the server closes the socket within ``seconds``; frames before
    that are ignored (presence and the like)."""
    deadline = time.monotonic() + seconds
    try:
        while True:
            await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
    except ConnectionClosed:
        return ws.close_code
    except TimeoutError:
        return None


@pytest.mark.parametrize("end", WAYS, ids=lambda f: f.__name__)
def test_the_conversation_socket_closes(stack, team, conversation, bob, end):
    async def scenario():
        ws = await ws_connect(stack, conversation, bob)
        assert json.loads(await ws.recv())["t"] == "sync"
        await asyncio.to_thread(end, team, bob)
        return await closed_within(ws, PROMPT)

    assert asyncio.run(scenario()) == 4404


@pytest.mark.parametrize("end", WAYS, ids=lambda f: f.__name__)
def test_the_team_share_socket_closes(stack, team, conversation, alice, bob, end):
    token = share(conversation, alice, mode="live")

    async def scenario():
        ws = await share_ws(stack, token, bob)
        assert json.loads(await ws.recv())["t"] == "sync"
        await asyncio.to_thread(end, team, bob)
        return await closed_within(ws, PROMPT)

    assert asyncio.run(scenario()) == 4404


def test_a_teammates_socket_stays_open(stack, team, conversation, alice, bob):
    async def scenario():
        ws = await ws_connect(stack, conversation, alice)
        assert json.loads(await ws.recv())["t"] == "sync"
        await asyncio.to_thread(deactivate, team, bob)
        code = await closed_within(ws, 1.0)
        await ws.close()
        return code

    assert asyncio.run(scenario()) is None


@pytest.mark.parametrize("end", WAYS, ids=lambda f: f.__name__)
def test_the_api_event_stream_ends(stack, team, conversation, bob, end):
    key = make_key(team, bob)

    async def scenario():
        async with client_for(stack) as client, open_stream(client, conversation, key) as response:
            assert response.status_code == 200
            stream = Stream(response)
            assert (await stream.next())["event"] == "snapshot"
            await asyncio.to_thread(end, team, bob)
            with pytest.raises(EOFError):  # a TimeoutError past PROMPT
                await stream.next(timeout=PROMPT)

    asyncio.run(scenario())
