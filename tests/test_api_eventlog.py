"""The conversation event log behind the event stream: what it keeps, when it admits it can't
vouch for a position (trimmed, expired, unknown), and the stream's reset, heartbeat and end —
against real Redis, and in memory as embedded mode keeps it."""

from __future__ import annotations

import asyncio
import time

import pytest

from api import eventlog
from api.eventlog import LogState, parse_id
from api.http import Caller
from api.stream import Opened, _events
from assistant import events
from tests.helpers import wait_until

TTL_MS = 3_600_000


@pytest.fixture(params=["redis", "memory"])
def backend(request, settings, redis_clean):
    """Each test runs against Redis and against embedded mode's in-memory log."""
    if request.param == "memory":
        settings.REDIS_URL = ""
        events.memory_log.logs.clear()
    return request.param


def log(conversation_id: str, event: dict) -> None:
    events.log_event_sync(conversation_id, event)


def read(conversation_id: str, position) -> tuple[LogState, list]:
    async def go():
        reader = eventlog.reader_for(conversation_id)
        try:
            return await reader.read_checked(position)
        finally:
            await reader.close()

    return asyncio.run(go())


def state_of(conversation_id: str) -> LogState:
    async def go():
        reader = eventlog.reader_for(conversation_id)
        try:
            return await reader.state()
        finally:
            await reader.close()

    return asyncio.run(go())


# --- The rules, alone ---------------------------------------------------------------------------


def test_the_resume_rules(settings):
    now = 10_000_000
    no_log = LogState(now, None, None, False)
    assert no_log.has_everything_after((now - 1000, 0))
    assert not no_log.has_everything_after((now - TTL_MS, 0))  # a log may have come and gone
    assert not no_log.has_everything_after((now + 1000, 0))  # from the future
    assert no_log.tail == (now - 1, 0)

    whole = LogState(now, (5000, 0), (9000, 3), False)
    assert whole.has_everything_after((9000, 3)) and whole.has_everything_after((6000, 0))
    assert whole.has_everything_after((4000, 7))  # before the first, but no gap possible
    assert not whole.has_everything_after((9000, 4))  # never given out
    assert not whole.has_everything_after((5000 - TTL_MS, 0))  # an older log expired between

    trimmed = LogState(now, (5000, 0), (9000, 3), True)
    assert trimmed.has_everything_after((5000, 0))
    assert not trimmed.has_everything_after((4999, 9))

    # Redis restarted at 8000 (keeping nothing): a position from before is reset, even where
    # the new log would otherwise seem to vouch for it; one from after is not.
    restarted = LogState(now, (8500, 0), (9000, 3), False, store_started_ms=8000)
    assert not restarted.has_everything_after((7999, 5))
    assert restarted.has_everything_after((8600, 0))
    assert not LogState(now, None, None, False, 8000).has_everything_after((7000, 0))


def test_only_well_formed_ids_parse():
    assert parse_id("1700000000000-12") == (1700000000000, 12)
    for bad in ("", "12", "a-b", "1-2-3", "-1-2", "1700000000000-1\n2", "9" * 16 + "-0"):
        assert parse_id(bad) is None


# --- Both backends ---------------------------------------------------------------------------


def test_entries_come_back_in_order_after_any_position(backend):
    for i in range(5):
        log("c1", {"t": "delta", "run": "r", "seq": i + 1, "text": str(i)})
    log("c1", {"t": "presence", "viewers": ["alice"]})  # not logged: only "who is here now"
    state, entries = read("c1", (0, 0))
    assert [e["seq"] for _, e in entries] == [1, 2, 3, 4, 5]
    assert state.last == entries[-1][0] and not state.trimmed
    ids = [entry_id for entry_id, _ in entries]
    assert ids == sorted(set(ids))
    _, rest = read("c1", ids[1])
    assert [e["seq"] for _, e in rest] == [3, 4, 5]
    assert read("other", (0, 0))[1] == []


def test_a_trimmed_log_says_so(backend, settings):
    settings.API_EVENT_LOG_LENGTH = 10
    for i in range(400):
        log("c2", {"t": "delta", "run": "r", "seq": i + 1, "text": "x"})
    state, entries = read("c2", (0, 0))
    first_kept = entries[0][1]["seq"]
    assert first_kept > 1 and state.trimmed  # Redis trims whole nodes: ~MAXLEN, at least
    assert not state.has_everything_after((0, 0))
    assert state.has_everything_after(entries[0][0])
    assert state.has_everything_after(state.last)


def test_an_expired_log_is_not_mistaken_for_a_quiet_one(backend, settings, time_machine):
    settings.API_EVENT_LOG_TTL = 1
    start = int(time.time()) + 1  # whole seconds: no rounding at the boundary
    if backend == "memory":
        time_machine.move_to(start, tick=False)
    log("c3", {"t": "run.started", "run": "r"})
    seen = state_of("c3").last
    # The log expires. The memory log reads this process's clock, moved on here; Redis expires
    # keys on its own clock, which no test can move: that is waited for (the TTL is a second).
    if backend == "memory":
        time_machine.move_to(start + 0.99, tick=False)
        assert state_of("c3").last == seen  # not before its time
        time_machine.move_to(start + settings.API_EVENT_LOG_TTL, tick=False)
    wait_until(lambda: state_of("c3").last is None, what="the log expired")
    assert not state_of("c3").has_everything_after(seen)
    log("c3", {"t": "run.completed", "run": "r"})  # a new one starts
    assert not state_of("c3").has_everything_after(seen)
    # A position taken when there was no log, shortly before the new one: nothing missed.
    settings.API_EVENT_LOG_TTL = 60
    tail = state_of("c4").tail
    log("c4", {"t": "run.started", "run": "r"})
    state, entries = read("c4", tail)
    assert state.has_everything_after(tail) and len(entries) == 1


# --- The stream itself ------------------------------------------------------------------------


async def take(stream, count: int, timeout: float = 10) -> list[bytes]:
    chunks = []
    for _ in range(count):
        chunks.append(await asyncio.wait_for(anext(stream), timeout))
    return chunks


def frames(chunks: list[bytes]) -> list[dict]:
    from tests.api_client import parse_sse

    return parse_sse(b"".join(chunks).decode())


@pytest.mark.django_db(transaction=True)
def test_a_lost_position_gets_reset_and_a_snapshot(backend, settings, conversation, alice):
    settings.API_EVENT_LOG_LENGTH = 10
    cid = str(conversation.uuid)
    log(cid, {"t": "run.started", "run": "r0"})
    early = state_of(cid).last
    for i in range(400):
        log(cid, {"t": "delta", "run": "r0", "seq": i + 1, "text": "x"})
    opened = Opened(Caller(alice), conversation.pk, cid, conversation.team_id, early)

    async def go():
        stream = _events(opened)
        chunks = await take(stream, 2)  # retry, then reset and snapshot together
        await stream.aclose()
        return chunks

    got = frames(asyncio.run(go())[1:])
    assert [f["event"] for f in got] == ["reset", "snapshot"]
    assert got[1]["id"] == eventlog.format_id(state_of(cid).last)


@pytest.mark.django_db(transaction=True)
def test_an_idle_stream_beats_and_ends_when_the_key_is_revoked(backend, settings, team, alice):
    from api.models import ApiKey
    from assistant.services import conversation_create
    from tests.api_client import make_key

    settings.API_SSE_HEARTBEAT_SECONDS = 0.2
    conversation = conversation_create(team=team, author=alice)
    make_key(team, alice)
    key = ApiKey.objects.get()
    opened = Opened(
        Caller(alice, key, "owner"), conversation.pk, str(conversation.uuid), team.pk, None
    )

    async def go():
        stream = _events(opened)
        start = await take(stream, 3)  # retry, snapshot, a heartbeat
        await asyncio.to_thread(ApiKey.objects.filter(pk=key.pk).update, revoked_at=time_now())
        rest = [chunk async for chunk in stream]  # ends by itself
        return start, rest

    start, rest = asyncio.run(go())
    assert start[0].startswith(b"retry:") and b"event: snapshot" in start[1]
    assert start[2] == b": keepalive\n\n"
    assert all(chunk == b": keepalive\n\n" for chunk in rest)


def time_now():
    from django.utils import timezone

    return timezone.now()


@pytest.mark.django_db(transaction=True)
def test_the_stream_ends_with_the_conversation(backend, conversation, alice):
    from assistant.services import conversation_delete

    opened = Opened(
        Caller(alice), conversation.pk, str(conversation.uuid), conversation.team_id, None
    )

    async def go():
        stream = _events(opened)
        await take(stream, 2)
        await asyncio.to_thread(conversation_delete, conversation=conversation)
        return [chunk async for chunk in stream]

    rest = frames(asyncio.run(go()))
    assert [f["event"] for f in rest] == ["conversation.deleted"]


@pytest.mark.django_db(transaction=True)
def test_deltas_the_snapshot_already_holds_are_not_sent_twice(
    backend, conversation, alice, monkeypatch
):
    """The snapshot is read after the log's position, so deltas that land in between are in
    both: the stream drops the log's copies."""
    import api.stream
    from assistant import streams
    from assistant.models import Run, RunStatus
    from assistant.services import message_send

    sent = message_send(conversation=conversation, author=alice, content="Hi")
    Run.objects.filter(pk=sent.run.pk).update(status=RunStatus.RUNNING)
    cid, rid = str(conversation.uuid), str(sent.run.uuid)

    async def delta(seq: int, text: str) -> None:
        await streams.append(rid, seq, text)
        await events.log_event(cid, events.delta_event(rid, seq, text))

    real_snapshot = api.stream._asnapshot

    async def racing_snapshot(pk):
        await delta(1, "Hel")
        await delta(2, "lo")
        return await real_snapshot(pk)

    monkeypatch.setattr(api.stream, "_asnapshot", racing_snapshot)

    async def go():
        stream = _events(Opened(Caller(alice), conversation.pk, cid, conversation.team_id, None))
        first = await take(stream, 2)
        await delta(3, " you")
        more = await take(stream, 1)
        await stream.aclose()
        return first, more

    first, more = asyncio.run(go())
    snapshot = frames(first)[0]
    assert snapshot["data"]["runs"] == [{"id": rid, "status": "running", "seq": 2, "text": "Hello"}]
    assert [(f["event"], f["data"]["seq"]) for f in frames(more)] == [("delta", 3)]


# --- One read per process for every stream (eventlog.LogHub) ------------------------------------


def test_one_read_serves_every_log_and_a_new_log_interrupts_the_blocked_read(
    redis_clean, monkeypatch
):
    """Streams of several conversations wait on one XREAD; a stream that opens while that
    read blocks on the others' logs gets its events at once (CLIENT UNBLOCK), not after the
    block: here the block is a minute and the wait ten seconds, so without the interruption
    the new stream's wait would come back empty."""
    monkeypatch.setattr(eventlog, "BLOCK_MS", 60_000)

    async def go():
        start = (int(time.time() * 1000) - 1, 0)
        first = [eventlog.reader_for(f"a{i}") for i in range(3)]
        waits = [asyncio.create_task(r.wait(start, 10_000)) for r in first]
        hub = eventlog.LogHub.for_this_loop()
        await wait_until_async(lambda: hub.reading)
        late = eventlog.reader_for("late")
        late_wait = asyncio.create_task(late.wait(start, 10_000))
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await asyncio.to_thread(log, "late", {"t": "x", "n": 0})
        got_late = await late_wait
        late_took = time.monotonic() - began
        reads_before = hub.reads
        for i in range(3):
            await asyncio.to_thread(log, f"a{i}", {"t": "x", "n": i})
        got = await asyncio.gather(*waits)
        for reader in [*first, late]:
            await reader.close()
        return got_late, late_took, got, hub.reads - reads_before, hub.task

    got_late, late_took, got, reads, task = asyncio.run(go())
    assert [e["n"] for _, e in got_late] == [0]
    assert late_took < 9  # the ten-second wait did not run out
    assert [[e["n"] for _, e in entries] for entries in got] == [[0], [1], [2]]
    assert reads <= 3  # the three logs' events came in at most three reads, not one each...
    assert task is None  # ...and the hub let its connection go with the last stream


def test_a_stream_joining_behind_the_hub_gets_every_entry_in_order(redis_clean):
    """Two streams of one conversation: the second starts from an older position than the
    hub has read to; it gets the entries in between from Redis, then the shared ones, with
    none twice and none missing."""

    async def go():
        start = (int(time.time() * 1000) - 1, 0)
        ahead, behind = eventlog.reader_for("c"), eventlog.reader_for("c")
        for n in range(3):
            await asyncio.to_thread(log, "c", {"t": "x", "n": n})
        seen_ahead = await ahead.wait(start, 5_000)  # the hub has read these three now
        position = seen_ahead[-1][0]
        waiting = asyncio.create_task(ahead.wait(position, 5_000))
        seen_behind = []
        at = start
        for n in range(3, 6):
            await asyncio.to_thread(log, "c", {"t": "x", "n": n})
        while len(seen_behind) < 6:
            entries = await behind.wait(at, 5_000)
            assert entries, "an entry went missing"
            seen_behind += entries
            at = entries[-1][0]
        more = await waiting
        await ahead.close()
        await behind.close()
        return seen_ahead + more, seen_behind

    seen_ahead, seen_behind = asyncio.run(go())
    assert [e["n"] for _, e in seen_behind] == [0, 1, 2, 3, 4, 5]
    assert [e["n"] for _, e in seen_ahead][:3] == [0, 1, 2]
    ids = [entry_id for entry_id, _ in seen_behind]
    assert ids == sorted(set(ids))


def test_the_access_ending_stops_a_wait_at_once(backend):
    async def go():
        reader = eventlog.reader_for("c")
        ended = asyncio.get_running_loop().create_future()
        wait = asyncio.create_task(reader.wait((int(time.time() * 1000), 0), 30_000, until=ended))
        await asyncio.sleep(0.05)
        ended.set_result(None)
        result = await asyncio.wait_for(wait, 5)
        await reader.close()
        return result

    assert asyncio.run(go()) is None


async def wait_until_async(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


@pytest.mark.django_db
def test_what_keeps_a_stream_allowed(team, alice, bob, charlie, other_team):
    """api/stream.py _still_allowed, one query: the conversation, the caller's active
    membership and, for a key, the key's being neither revoked nor expired."""
    from datetime import timedelta

    from accounts.models import Membership
    from api.models import ApiKey
    from api.stream import _still_allowed
    from assistant.models import Conversation
    from assistant.services import conversation_create
    from tests.api_client import make_key

    conversation = conversation_create(team=team, author=alice)
    make_key(team, bob)
    key = ApiKey.objects.get(user=bob)

    def allowed(caller: Caller) -> bool:
        return _still_allowed(
            Opened(caller, conversation.pk, str(conversation.uuid), team.pk, None)
        )

    by_key = Caller(bob, key, "member")
    assert allowed(by_key) and allowed(Caller(bob))
    assert not allowed(Caller(charlie))  # of another team
    ApiKey.objects.filter(pk=key.pk).update(expires=time_now() - timedelta(seconds=1))
    assert not allowed(by_key) and allowed(Caller(bob))
    ApiKey.objects.filter(pk=key.pk).update(expires=None, revoked_at=time_now())
    assert not allowed(by_key)
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=None)
    assert allowed(by_key)
    type(bob).objects.filter(pk=bob.pk).update(is_active=False)
    assert not allowed(by_key) and not allowed(Caller(bob))
    type(bob).objects.filter(pk=bob.pk).update(is_active=True)
    Membership.objects.filter(team=team, user=bob).delete()
    assert not allowed(by_key) and not allowed(Caller(bob))
    assert allowed(Caller(alice))
    Conversation.objects.filter(pk=conversation.pk).delete()
    assert not allowed(Caller(alice))
