"""The only module that talks to the channel layer.

Every event about a conversation goes to the group ``conversation.<uuid>``. Events carry data,
not HTML; the consumer renders them for the browser. Deltas have their own small message type so
the consumer can forward them without touching the ORM or the template engine.

Event types: message.created, run.started, delta, run.completed, run.failed, run.cancelled,
run.waiting (parked for an approval), run.updated (undone), tool.started, tool.finished,
tool.awaiting, tool.decided, conversation.renamed, conversation.deleted, presence.

Every event but presence is also appended to the conversation's event log (see "The event log"
below), which the JSON API's event stream reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import weakref
from collections import deque
from typing import Any, Protocol

import hiredis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer  # type: ignore[import-untyped]
from django.conf import settings
from django.db import transaction
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import metrics

from . import streams
from .models import Conversation, Message, Run, ToolCall

log = logging.getLogger(__name__)


def group_name(conversation_id: str) -> str:
    return f"conversation.{conversation_id}"


def user_group(user_id: int) -> str:
    """Every socket and event stream one person has open, to close them all the moment they
    lose a team or their account (accounts.lifecycle.access_ended)."""
    return f"user.{user_id}"


ACCESS_ENDED = "access.ended"


def end_access(*, user_id: int, team_id: int | None, **kwargs) -> None:
    """Receiver of accounts.lifecycle.access_ended (after commit, from sync code): tell every
    connection of the person; those on ``team_id``'s conversations (all, when None) close."""
    layer = get_channel_layer()
    async_to_sync(layer.group_send)(user_group(user_id), {"type": ACCESS_ENDED, "team": team_id})


def ends_access(message: dict[str, Any], team_id: int) -> bool:
    """Whether an access.ended message is about ``team_id``."""
    return message.get("team") in (None, team_id)


class AccessWatch:
    """For connections that are not consumers (the API's event stream): a channel of the
    layer's own in the person's group. ``await watch.ended()`` returns once their access to
    the team ends."""

    def __init__(self, user_id: int, team_id: int) -> None:
        self.group, self.team_id = user_group(user_id), team_id
        self.layer = get_channel_layer()
        self.channel = ""

    async def __aenter__(self) -> AccessWatch:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.layer.group_discard(self.group, self.channel)

    async def ended(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            if message.get("type") == ACCESS_ENDED and ends_access(message, self.team_id):
                return


class LayerWatch:
    """Notices this process's channel layer losing Redis, and tells its sockets once it is back.

    Pub/sub is at-most-once: what is published while Redis is down or restarting, or before this
    process has subscribed again, reaches nobody. A lost delta shows as a gap and the client
    resyncs; a lost end event (run.completed/failed) would leave a socket that stayed open
    showing its run as still running. So every PING_SECONDS this process sends itself a message
    through the layer; one not back within LOST_AFTER_SECONDS (or that can't be sent) means
    messages may have been lost, and the first one back after that calls ``layer_recovered()``
    on every registered consumer, which sends its client a fresh ``sync`` (run states from the
    database, text so far from Redis): the browser re-fetches the runs that ended meanwhile.
    One watch per event loop (Daphne has one), running while it has consumers."""

    PING_SECONDS = 1.0
    LOST_AFTER_SECONDS = 3.0

    def __init__(self, layer: Any = None) -> None:
        self.layer = layer  # None: the default channel layer
        self.consumers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.task: asyncio.Task[None] | None = None
        self.recoveries = 0

    def add(self, consumer: Any) -> None:
        self.consumers.add(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._watch())

    def discard(self, consumer: Any) -> None:
        self.consumers.discard(consumer)

    async def _watch(self) -> None:
        layer = self.layer or get_channel_layer()
        while True:  # Redis may be away right now (a socket that connected just before)
            try:
                channel = await layer.new_channel("layerwatch.")
                break
            except Exception:
                await asyncio.sleep(self.PING_SECONDS)
                if not self.consumers:
                    return
        back = asyncio.Event()

        async def read() -> None:
            while True:
                await layer.receive(channel)
                back.set()

        reader = asyncio.get_running_loop().create_task(read())
        healthy = True
        try:
            while True:
                back.clear()
                try:
                    await layer.send(channel, {"type": "layer.ping"})
                    await asyncio.wait_for(back.wait(), self.LOST_AFTER_SECONDS)
                    ok = True
                except Exception:  # Redis refused the send, or the ping never came back
                    ok = False
                if ok and not healthy:
                    self.recoveries += 1
                    log.warning("Channel layer back after an outage: resyncing %d socket(s)",
                                len(self.consumers))  # fmt: skip
                    for consumer in list(self.consumers):
                        asyncio.get_running_loop().create_task(consumer.layer_recovered())
                healthy = ok
                await asyncio.sleep(self.PING_SECONDS)
                if not self.consumers:
                    return  # the next consumer starts a new watch (no await in between)
        finally:
            reader.cancel()


_layer_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LayerWatch] = (
    weakref.WeakKeyDictionary()
)


def layer_watch() -> LayerWatch:
    """This event loop's LayerWatch (see above)."""
    loop = asyncio.get_running_loop()
    watch = _layer_watches.get(loop)
    if watch is None:
        watch = _layer_watches[loop] = LayerWatch()
    return watch


def message_data(message: Message) -> dict[str, Any]:
    author = message.author
    return {
        "id": str(message.uuid),
        "role": message.role,
        "author": author.name if author else None,
        "content": message.content,
        "created": message.created.isoformat(),
    }


def run_data(run: Run) -> dict[str, Any]:
    return {"id": str(run.uuid), "status": run.status, "error": run.error}


def tool_call_data(call: ToolCall) -> dict[str, Any]:
    """Everything a tool call's card shows (the consumer renders it without the database)."""
    decided_by = call.decided_by if call.decided_by_id else None
    return {
        "id": str(call.uuid),
        "run": str(call.run.uuid),
        "name": call.name,
        "arguments": call.arguments,
        "status": call.status,
        "output": call.output,
        "exit_code": call.exit_code,
        "duration_ms": call.duration_ms,
        "truncated": call.truncated,
        "approval": call.approval,
        "decided_by": decided_by.name if decided_by else None,
        "decided_at": call.decided_at.isoformat() if call.decided_at else None,
    }


async def publish(conversation_id: str, event: dict[str, Any]) -> None:
    await log_event(conversation_id, event)
    try:
        await _group_send(conversation_id, event)
    except Exception:
        # Redis away (restarting): live viewers miss this event. What it says is in the
        # database; a viewer whose socket stays up resyncs on the next gap, one that
        # reconnects reloads (static/js/conversation.js).
        log.exception("Could not publish %s to conversation %s", event.get("t"), conversation_id)


async def _group_send(conversation_id: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    await layer.group_send(group_name(conversation_id), {"type": "conv.event", "event": event})


async def publish_delta(conversation_id: str, run_id: str, seq: int, text: str) -> None:
    await log_event(conversation_id, delta_event(run_id, seq, text))
    layer = get_channel_layer()
    await layer.group_send(
        group_name(conversation_id), {"type": "conv.delta", "run": run_id, "seq": seq, "text": text}
    )


class Streamed(Protocol):
    """A run's text as it has streamed so far (agent.DeltaPublisher)."""

    def length_through(self, seq: int) -> int:
        """The length in bytes (UTF-8) of the text from the start through delta ``seq``."""
        ...

    def text_through(self, seq: int) -> str: ...


# One delta batch in one command: for each delta, the run's text and number (the snapshot a
# viewer resyncs from), the conversation's event log entry and its expiry, the PUBLISH to the
# conversation's group; then each run's cancel flag. Answers the text's length after each
# APPEND (see DeltaBatcher._rewrite_lost), then a 0/1 per run for its cancel flag.
# KEYS: text, seq, log per delta, then a cancel flag per run.
# ARGV: count, log length, log TTL, stream TTL, then text, seq, entry, channel, message per delta.
DELTA_SCRIPT = """
local count = tonumber(ARGV[1])
local log_length, log_ttl, ttl = ARGV[2], ARGV[3], ARGV[4]
local out = {}
for i = 0, count - 1 do
  local k, a = i * 3, 4 + i * 5
  local length = redis.call('APPEND', KEYS[k + 1], ARGV[a + 1])
  if length == string.len(ARGV[a + 1]) then
    redis.call('EXPIRE', KEYS[k + 1], ttl)
  end
  redis.call('SET', KEYS[k + 2], ARGV[a + 2], 'EX', ttl)
  redis.call('XADD', KEYS[k + 3], 'MAXLEN', '~', log_length, '*', 'e', ARGV[a + 3])
  redis.call('EXPIRE', KEYS[k + 3], log_ttl)
  redis.call('PUBLISH', ARGV[a + 4], ARGV[a + 5])
  out[#out + 1] = length
end
for k = count * 3 + 1, #KEYS do
  out[#out + 1] = redis.call('EXISTS', KEYS[k])
end
return out
"""

DELTA_SCRIPT_SHA = hashlib.sha1(DELTA_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class ScriptWire:
    """The delta script's own connection, spoken to without redis-py's client layer.

    Each batch is one EVALSHA; through redis-py's client (its connection pool, retry wrapper,
    argument encoding and command bookkeeping) a batch of one delta cost the worker ~120 µs of
    CPU, and at a few streams most batches hold one delta. Here the command is packed by hiredis
    in one call and written and read on a connection taken from the client's pool once and kept
    (the pool's settings: database, password, TLS): ~35 µs (docs/benchmarks.md). One batch is
    in flight at a time (DeltaBatcher sends from one task), so the connection is never shared.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.connection: Any = None

    async def run(self, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", DELTA_SCRIPT_SHA, len(keys), *keys, *args)
        for attempt in (1, 2):
            try:
                return await self._call(command)
            except NoScriptError:
                # Redis lost its script cache (a restart): EVAL runs it and caches it again.
                return await self.client.eval(DELTA_SCRIPT, len(keys), *keys, *args)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if attempt == 2:
                    raise
                # Once more on a new connection, as redis-py's client would. Had the script run
                # before the connection broke, its text would be appended twice: the APPEND's
                # answer then differs from the run's length and DeltaBatcher rewrites it whole.
        raise AssertionError("unreachable")

    async def _call(self, command: tuple[Any, ...]) -> Any:
        if self.connection is None:
            self.connection = await self.client.connection_pool.get_connection()
        connection = self.connection
        try:
            await connection.send_packed_command(hiredis.pack_command(command), False)
            return await connection.read_response()
        except BaseException as exc:
            if isinstance(exc, ResponseError):
                raise  # an answer (NOSCRIPT, say): the connection is in step, keep it
            # Broken, or cancelled half-way: the connection may be out of step with Redis.
            self.connection = None
            await connection.disconnect()
            await self.client.connection_pool.release(connection)
            raise


def _encode_delta(run_id: str, seq: int, text: str) -> str:
    # What _encode(delta_event(...)) gives, made by hand: this runs for every delta.
    return f'{{"t":"delta","run":"{run_id}","seq":{seq},"text":{json.dumps(text)}}}'


class DeltaBatcher:
    """Production's delta path: every delta of every run on this event loop goes to Redis in
    one command per turn of the loop (DELTA_SCRIPT: the snapshot writes, the event log, the
    PUBLISH to the conversation's group, and a look at each run's cancel flag) instead of two
    round trips per delta. One script costs the worker less than half the CPU of the six
    commands of a MULTI it replaced (~90 against ~210 µs per delta, measured with redis-py).

    At 50 streams that is one round trip for dozens of deltas; measured per-delta latency fell
    from seconds (sequential round trips piling up behind a busy loop) to milliseconds. The
    PUBLISH carries exactly what the layer's own group_send would (same channel name, same
    serialisation), so consumers can't tell the difference; it needs the layer and the stream
    state on the same Redis, which settings guarantee (one REDIS_URL). The script goes out on a
    connection of its own, without redis-py's client layer (ScriptWire).
    """

    _by_loop: dict[int, DeltaBatcher] = {}

    @classmethod
    def for_this_loop(cls) -> DeltaBatcher:
        loop = asyncio.get_running_loop()
        batcher = cls._by_loop.get(id(loop))
        if batcher is None:
            batcher = cls._by_loop[id(loop)] = cls()
        return batcher

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.pending: list[tuple[str, str, int, str, asyncio.Future, Any]] = []
        # When each pending delta was handed over (loop time), for the delta lag metric.
        self.emitted: list[float] = []
        self.wakeup = asyncio.Event()
        self.cancel_requested: set[str] = set()
        self.wire: ScriptWire | None = None
        self.task = asyncio.create_task(self._run())

    def add(
        self,
        conversation_id: str,
        run_id: str,
        seq: int,
        text: str,
        whole: Streamed | None = None,
    ) -> asyncio.Future:
        """Queue a delta; the future resolves once it is in Redis and published. ``whole``
        (the run's text through any delta so far) lets the batch write the run's text again
        when Redis lost it (see _rewrite_lost)."""
        done = asyncio.get_running_loop().create_future()
        self.pending.append((conversation_id, run_id, seq, text, done, whole))
        self.emitted.append(time.monotonic())
        self.wakeup.set()
        return done

    async def _run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.pending = self.pending, []
            emitted, self.emitted = self.emitted, []
            if batch:
                await self._send(batch)
                metrics.safely(_observe_lag, emitted, time.monotonic())

    async def _send(self, batch) -> None:
        runs: list[str] = []
        keys: list[str] = []
        args: list[Any] = [len(batch), settings.API_EVENT_LOG_LENGTH, settings.API_EVENT_LOG_TTL]
        args.append(streams.TTL_SECONDS)
        for conversation_id, run_id, seq, text, _, _ in batch:
            # The log entry, the snapshot and the PUBLISH change together (one script runs
            # alone on Redis): they agree at any instant.
            keys += streams.delta_keys(run_id)
            keys.append(log_key(conversation_id))
            message = {"type": "conv.delta", "run": run_id, "seq": seq, "text": text}
            channel = _group_channel(self.layer, group_name(conversation_id))
            args += [text, seq, _encode_delta(run_id, seq, text), channel]
            args.append(self.layer.serialize(message))
            if run_id not in runs:
                runs.append(run_id)
        keys += [streams.cancel_key(run_id) for run_id in runs]
        error: Exception | None = None
        try:
            if self.wire is None:
                self.wire = ScriptWire(streams.async_redis())
            results = await self.wire.run(keys, args)
        except Exception as exc:  # live viewers miss these; the saved message has them all
            log.exception("Could not publish %d deltas", len(batch))
            error = exc
        else:
            for run_id, flagged in zip(runs, results[len(batch) :], strict=True):
                if flagged:
                    self.cancel_requested.add(run_id)
            await self._rewrite_lost(batch, results)
        for *_, done, _ in batch:
            if not done.done():
                done.set_result(error)

    async def _rewrite_lost(self, batch, results) -> None:
        """APPEND answers the text's new length: when it is not what the run has streamed, the
        text in Redis was lost (Redis restarted, keeping nothing) and a snapshot would now hand
        a viewer who resyncs only the deltas since. Write the whole text again."""
        lost: dict[str, tuple[int, Streamed]] = {}
        for (_, run_id, seq, _, _, whole), length in zip(batch, results, strict=False):
            if whole is not None and length != whole.length_through(seq):
                lost[run_id] = (seq, whole)  # the batch's last delta of the run wins
        if not lost:
            return
        pipe = streams.async_redis().pipeline(transaction=True)
        for run_id, (seq, whole) in lost.items():
            log.warning("The stream of run %s was lost from Redis: written again whole", run_id)
            streams.queue_rewrite(pipe, run_id, seq, whole.text_through(seq))
        try:
            await pipe.execute()
        except Exception:
            log.exception("Could not write the lost streams of %d run(s) again", len(lost))


def _observe_lag(emitted: list[float], published: float) -> None:
    for start in emitted:
        metrics.DELTA_LAG.observe(published - start)


def publish_sync(conversation_id: str, event: dict[str, Any]) -> None:
    """For events from sync code (views, services: every message sent goes through here).
    With Redis, the log entry and the PUBLISH are one MULTI on the sync client (see
    _publish_direct). The in-memory layer lives on the server's own loop: inside Daphne's
    worker threads async_to_sync runs the group send there."""
    layer = get_channel_layer()
    if settings.REDIS_URL and isinstance(layer, RedisPubSubChannelLayer):  # production
        _publish_direct(layer, conversation_id, event)
        return
    log_event_sync(conversation_id, event)
    async_to_sync(_group_send)(conversation_id, event)


def _group_channel(layer: RedisPubSubChannelLayer, group: str) -> str:
    """The Redis channel the pub/sub layer publishes a group's messages on: what its
    ``_get_group_channel_name`` answers, which needs a running loop to reach (tested equal)."""
    return f"{layer._kwargs.get('prefix', 'asgi')}__group__{group}"


def _publish_direct(
    layer: RedisPubSubChannelLayer, conversation_id: str, event: dict[str, Any]
) -> None:
    """The log entry, its expiry and the PUBLISH the layer's group_send would make (same
    channel, same serialisation: consumers can't tell), in one round trip from this thread.

    It was the log entry with the sync client, then async_to_sync(group_send): a hop onto the
    server's loop and back, which under load waited behind everything else on that loop — on
    the path of every POST of a message, before its run is enqueued (docs/benchmarks.md, issue
    14). The PUBLISH is done when this returns, so what is enqueued after it (the run, whose
    events come from the worker) still reaches viewers after it."""
    message = {"type": "conv.event", "event": event}
    pipe = streams.sync_redis().pipeline(transaction=True)
    if event.get("t") not in UNLOGGED:
        queue_log(pipe, conversation_id, event)
        queue_log_expiry(pipe, conversation_id)
    pipe.publish(_group_channel(layer, group_name(conversation_id)), layer.serialize(message))
    try:
        pipe.execute()
    except Exception:
        # As before: the failure is logged, and raised (the group send's always was).
        log.exception("Could not publish %s to conversation %s", event.get("t"), conversation_id)
        raise


def publish_on_commit(conversation_id: str, event: dict[str, Any]) -> None:
    transaction.on_commit(lambda: publish_sync(conversation_id, event))


def message_created(message: Message, run: Run | None) -> dict[str, Any]:
    return {
        "t": "message.created",
        "message": message_data(message),
        "run": run_data(run) if run else None,
    }


def conversation_renamed(conversation: Conversation) -> dict[str, Any]:
    return {"t": "conversation.renamed", "title": conversation.display_title}


# --- The event log ---------------------------------------------------------------------------
# The channel layer is at-most-once pub/sub: whoever isn't subscribed at the instant an event is
# published never gets it. The JSON API's event stream needs more — a client that reconnects
# gives the id of the last event it saw and must get exactly what it missed — so every event
# (but presence, which is only "who is here now") is also appended to a log per conversation:
# a Redis Stream trimmed to about API_EVENT_LOG_LENGTH entries and expiring API_EVENT_LOG_TTL
# seconds after its last event. Entry ids (``<ms>-<n>``) are the stream's event ids. Embedded
# mode keeps the same log in this process's memory. The reading side is api/eventlog.py.

UNLOGGED = frozenset({"presence"})


def log_key(conversation_id: str) -> str:
    return f"tandem:events:{conversation_id}"


def delta_event(run_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"t": "delta", "run": run_id, "seq": seq, "text": text}


def _encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def queue_log(pipe, conversation_id: str, event: dict[str, Any]) -> None:
    """Add one event to a Redis pipeline. Approximate trimming (``MAXLEN ~``) costs O(1): it
    drops whole nodes of the stream, so the log holds at least, not exactly, that many."""
    pipe.xadd(
        log_key(conversation_id),
        {"e": _encode(event)},
        maxlen=settings.API_EVENT_LOG_LENGTH,
        approximate=True,
    )


def queue_log_expiry(pipe, conversation_id: str) -> None:
    pipe.expire(log_key(conversation_id), settings.API_EVENT_LOG_TTL)


def _log_pipeline(client, conversation_id: str, event: dict[str, Any]):
    pipe = client.pipeline(transaction=True)  # an entry never exists without its expiry
    queue_log(pipe, conversation_id, event)
    queue_log_expiry(pipe, conversation_id)
    return pipe


async def log_event(conversation_id: str, event: dict[str, Any]) -> None:
    if event.get("t") in UNLOGGED:
        return
    if not settings.REDIS_URL:
        memory_log.append(conversation_id, event)
        return
    try:
        await _log_pipeline(streams.async_redis(), conversation_id, event).execute()
    except Exception:  # the live viewers must still get it; an API stream misses it
        log.exception("Could not log %s of conversation %s", event.get("t"), conversation_id)


def log_event_sync(conversation_id: str, event: dict[str, Any]) -> None:
    if event.get("t") in UNLOGGED:
        return
    if not settings.REDIS_URL:
        memory_log.append(conversation_id, event)
        return
    try:
        _log_pipeline(streams.sync_redis(), conversation_id, event).execute()
    except Exception:
        log.exception("Could not log %s of conversation %s", event.get("t"), conversation_id)


EntryId = tuple[int, int]


class _ConversationLog:
    def __init__(self) -> None:
        self.entries: deque[tuple[EntryId, str]] = deque()
        self.trimmed = False
        self.last_write_ms = 0


class MemoryLog:
    """Embedded mode's event log, with the Redis Stream's rules: ids ``<ms>-<n>`` that only
    grow, the oldest entries dropped past the length (noted, so a reader can tell it missed
    something) and the whole log dropped once idle for the TTL."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # readers take it around state() and after() together
        self.logs: dict[str, _ConversationLog] = {}
        self.last: EntryId = (0, 0)
        self.appends = 0

    def _expired(self, entry: _ConversationLog, now_ms: int) -> bool:
        return now_ms - entry.last_write_ms >= settings.API_EVENT_LOG_TTL * 1000

    def append(self, conversation_id: str, event: dict[str, Any]) -> EntryId:
        data = _encode(event)
        with self.lock:
            now = int(time.time() * 1000)
            self.last = (now, 0) if now > self.last[0] else (self.last[0], self.last[1] + 1)
            entry = self.logs.get(conversation_id)
            if entry is None or self._expired(entry, now):
                entry = self.logs[conversation_id] = _ConversationLog()
            entry.entries.append((self.last, data))
            while len(entry.entries) > settings.API_EVENT_LOG_LENGTH:
                entry.entries.popleft()
                entry.trimmed = True
            entry.last_write_ms = now
            self.appends += 1
            if self.appends % 1000 == 0:
                for key in [k for k, v in self.logs.items() if self._expired(v, now)]:
                    del self.logs[key]
            return self.last

    def state(self, conversation_id: str) -> tuple[int, EntryId | None, EntryId | None, bool]:
        """(now in ms, first id, last id, whether entries were dropped from the front); ids
        are None when there is no log."""
        with self.lock:
            now = int(time.time() * 1000)
            entry = self.logs.get(conversation_id)
            if entry is None or self._expired(entry, now) or not entry.entries:
                return now, None, None, False
            first, last = entry.entries[0][0], entry.entries[-1][0]
            return now, first, last, entry.trimmed

    def after(self, conversation_id: str, position: EntryId, count: int):
        with self.lock:
            entry = self.logs.get(conversation_id)
            if entry is None or self._expired(entry, int(time.time() * 1000)):
                return []
            found = []
            for eid, data in reversed(entry.entries):  # the new ones are at the end
                if eid <= position:
                    break
                found.append((eid, data))
            found.reverse()
            return found[:count]


memory_log = MemoryLog()
