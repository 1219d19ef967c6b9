"""Reading a conversation's event log (written by assistant/events.py) for the event stream.

Ids are ``<ms>-<n>``, growing. A reader at position P (the id of the last event it has) gets
the entries after P. What the log can't give back is reported, never skipped silently:

- the log is trimmed from the front past API_EVENT_LOG_LENGTH entries: a reader whose P is
  before the first entry left, after trimming, has lost the ones in between;
- the log expires API_EVENT_LOG_TTL seconds after its last entry, and a later event starts a
  new one: entries newer than P may have come and gone with the old log. That can only have
  happened if the new log's first entry (or, with no log, now) is at least the TTL after P,
  since the old log lived at least that long after its last entry, which is at least P.

- Redis restarted after P (it keeps nothing here): the log P belongs to is gone, whatever the
  new one holds. Redis's uptime says when it started.

Redis says how many entries a stream lost to trimming (entries-added minus length) but not
which, so a reader before the first entry of a trimmed log is told it lost events even in
the rare case that exactly the ones it had were trimmed: a needless resync, never a hole.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import weakref
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from django.conf import settings

from assistant import events, streams

EntryId = tuple[int, int]
ID_RE = re.compile(r"^(\d{1,15})-(\d{1,19})$")
COUNT = 500  # entries per read


def parse_id(text: str) -> EntryId | None:
    match = ID_RE.match(text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def format_id(entry_id: EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


@dataclass(frozen=True)
class LogState:
    now_ms: int
    first: EntryId | None  # None: no log (never written, or expired)
    last: EntryId | None
    trimmed: bool  # whether this log has dropped entries from its front
    # When Redis started, as far as its uptime (whole seconds) tells: at most a second late.
    # None where the log is in memory (embedded mode).
    store_started_ms: int | None = None

    @property
    def tail(self) -> EntryId:
        """The position of a reader that has everything so far. With no log: just before
        now, so the first entry of a log made later (its id is at least now) comes after it."""
        if self.last is not None:
            return self.last
        return (self.now_ms - 1, 0)

    def has_everything_after(self, position: EntryId) -> bool:
        ttl_ms = settings.API_EVENT_LOG_TTL * 1000
        if self.store_started_ms is not None and position[0] < self.store_started_ms:
            # Redis restarted since: without persistence the log went with it (with it, the
            # reader is told to start over needlessly, never left with a hole).
            return False
        if self.last is None:
            return position[0] <= self.now_ms and self.now_ms - position[0] < ttl_ms
        if position > self.last:
            return False  # an id this log never gave out
        if self.first is None:  # an empty log (every entry deleted)
            return position == self.last
        if position >= self.first:
            return True  # trimming only takes from the front
        if self.trimmed:
            return False
        return self.first[0] - position[0] < ttl_ms


Entry = tuple[EntryId, dict[str, Any]]


def _decode_entries(raw: Any) -> list[Entry]:  # XRANGE/XREAD entries, as redis-py gives them
    entries = []
    for entry_id, fields in raw:
        if isinstance(entry_id, bytes):
            entry_id = entry_id.decode()
        data = fields.get(b"e") or fields.get("e")
        position = parse_id(entry_id)
        assert position is not None  # ids Redis generated always parse
        entries.append((position, json.loads(data)))
    return entries


def _id(value: str | bytes | None) -> EntryId | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return parse_id(value)


class RedisReader:
    """One event stream's reader. Reading with a check (state, read_checked) is a MULTI on the
    shared connection pool; waiting for new entries goes through this event loop's LogHub, so
    a process serving many streams holds one blocked XREAD for all of them."""

    def __init__(self, conversation_id: str) -> None:
        self.key = events.log_key(conversation_id)
        self.subscription: _Subscription | None = None

    async def close(self) -> None:
        if self.subscription is not None:
            self.subscription.hub.unsubscribe(self.subscription)
            self.subscription = None

    async def state(self) -> LogState:
        return (await self._read(None))[0]

    async def read_checked(self, position: EntryId) -> tuple[LogState, list[Entry]]:
        """The log's state and the entries after ``position``, at one instant (one MULTI)."""
        return await self._read(position)

    async def _read(self, position: EntryId | None) -> tuple[LogState, list[Entry]]:
        pipe = streams.async_redis().pipeline(transaction=True)
        pipe.time()
        pipe.info("server")
        pipe.xinfo_stream(self.key)
        if position is not None:
            pipe.xread({self.key: format_id(position)}, count=COUNT)
        (seconds, micros), server, info, *found = await pipe.execute(raise_on_error=False)
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        started_ms = now_ms - int(server.get("uptime_in_seconds", 0)) * 1000
        if isinstance(info, Exception):  # no such key: no log
            return LogState(now_ms, None, None, False, started_ms), []
        for result in found:
            if isinstance(result, Exception):
                raise result
        state = LogState(
            now_ms,
            _id(info.get("recorded-first-entry-id")) if info.get("length") else None,
            _id(info.get("last-generated-id")),
            # Entries only leave our logs by trimming, from the front.
            int(info.get("entries-added", 0)) > int(info.get("length", 0)),
            started_ms,
        )
        return state, _decode_entries(found[0][0][1]) if found and found[0] else []

    async def wait(
        self, position: EntryId, block_ms: int, until: asyncio.Future[Any] | None = None
    ) -> list[Entry] | None:
        """Entries after ``position``, waiting up to ``block_ms`` for the first one; None as
        soon as ``until`` is done (the caller's access ended)."""
        hub = LogHub.for_this_loop()
        if self.subscription is None:
            self.subscription = hub.subscribe(self.key, position)
        return await hub.wait(self.subscription, position, block_ms, until)


# --- One blocked read per process -----------------------------------------------------------
# Each event stream used to hold a Redis connection of its own in XREAD BLOCK and sent one XREAD
# per event it forwarded: at 10 conversations streaming that was most of the web process's CPU
# for a delta on the event stream (bench/fanout.py, docs/benchmarks.md). The hub reads every
# watched log with one XREAD (many keys, one reply holding what all of them got) and hands the
# entries to the streams of this process; a stream that opens on a log the blocked read doesn't
# cover interrupts it (CLIENT UNBLOCK) so it is covered at once.

BLOCK_MS = 5000  # the longest the hub's read blocks; a new log interrupts it


class _Subscription:
    """One stream's share of the hub: what the hub read for its log since ``base``."""

    __slots__ = ("base", "buffer", "error", "hub", "key", "waiter")

    def __init__(self, hub: LogHub, key: str, base: EntryId) -> None:
        self.hub, self.key = hub, key
        # The buffer holds every entry of the log after ``base``, up to what the hub read:
        # a reader at or past ``base`` takes from it, one before it reads Redis itself.
        self.base = base
        self.buffer: list[Entry] = []
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None

    def deliver(self, entries: list[Entry]) -> None:
        if len(self.buffer) + len(entries) > 2 * COUNT:
            # A stream far behind (its client reads slowly): keep nothing, it reads Redis
            # from its own position next (with the trim check the stream makes every COUNT).
            self.buffer.clear()
            self.base = entries[-1][0]
        else:
            self.buffer.extend(entries)
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def take(self, position: EntryId) -> list[Entry]:
        found = [entry for entry in self.buffer if entry[0] > position]
        if self.buffer:
            self.base = max(self.base, self.buffer[-1][0])
            self.buffer.clear()
        return found


class _Log:
    __slots__ = ("position", "subscriptions")

    def __init__(self, position: EntryId) -> None:
        self.position = position  # the hub's next read starts after it
        self.subscriptions: set[_Subscription] = set()


def _wake_future(future: asyncio.Future[Any], *_: Any) -> None:
    if not future.done():
        future.set_result(None)


class LogHub:
    """This event loop's reader of every conversation log its event streams watch."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LogHub] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def for_this_loop(cls) -> LogHub:
        loop = asyncio.get_running_loop()
        hub = cls._by_loop.get(loop)
        if hub is None:
            hub = cls._by_loop[loop] = cls()
        return hub

    def __init__(self) -> None:
        self.logs: dict[str, _Log] = {}
        self.task: asyncio.Task[None] | None = None
        self.client_id: int | None = None
        self.reading = False  # an XREAD is on its way or blocked
        self.unblocking: asyncio.Task[None] | None = None
        self.reads = 0  # XREADs made (tests, and a look with a debugger)

    def subscribe(self, key: str, position: EntryId) -> _Subscription:
        log = self.logs.get(key)
        if log is None:
            log = self.logs[key] = _Log(position)
            self._cover_new_log()
        subscription = _Subscription(self, key, log.position)
        log.subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: _Subscription) -> None:
        log = self.logs.get(subscription.key)
        if log is None:
            return
        log.subscriptions.discard(subscription)
        if not log.subscriptions:
            del self.logs[subscription.key]  # the next read leaves it out
            if not self.logs and self.task is not None:
                self.task.cancel()  # nobody left: free the connection now, not after a block
                self.task = None

    async def wait(
        self,
        subscription: _Subscription,
        position: EntryId,
        block_ms: int,
        until: asyncio.Future[Any] | None,
    ) -> list[Entry] | None:
        if subscription.error is not None:
            raise subscription.error
        if position < subscription.base:
            # Behind what the hub read for this log (it joined later than another stream of
            # the same conversation, or fell behind): the entries in between come from Redis.
            found: Any = await streams.async_redis().xread(
                {subscription.key: format_id(position)}, count=COUNT
            )
            entries = _decode_entries(found[0][1]) if found else []
            if entries:
                return entries
        entries = subscription.take(position)
        if entries:
            return entries
        if until is not None and until.done():
            return None
        loop = asyncio.get_running_loop()
        waiter = subscription.waiter = loop.create_future()
        timer = loop.call_later(block_ms / 1000, _wake_future, waiter)
        wake = functools.partial(_wake_future, waiter)
        if until is not None:
            until.add_done_callback(wake)
        try:
            await waiter
        finally:
            timer.cancel()
            subscription.waiter = None
            if until is not None:
                until.remove_done_callback(wake)
        if subscription.error is not None:
            raise subscription.error
        if until is not None and until.done():
            return None
        return subscription.take(position)

    # --- the read ---

    def _cover_new_log(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        elif self.reading and (self.unblocking is None or self.unblocking.done()):
            self.unblocking = asyncio.get_running_loop().create_task(self._unblock())

    async def _unblock(self) -> None:
        """Have the blocked read return now, so the next one covers the new log."""
        for _ in range(50):
            if not self.reading or self.client_id is None:
                return  # the read ended by itself; the next one covers the log
            try:
                if await streams.async_redis().client_unblock(self.client_id):
                    return
            except Exception:  # Redis away: the read fails too, and the streams end
                return
            # 0: the XREAD has not reached Redis yet (or just returned): look again shortly.
            await asyncio.sleep(0.002)
        # Never found blocked (its connection was replaced, with another id): start over.
        if self.task is not None:
            self.task.cancel()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=5,
            socket_timeout=None,  # blocking reads wait longer than any sensible timeout
            max_connections=1,
            client_name="tandem-sse",
        )
        try:
            self.client_id = int(await client.client_id())
            while self.logs:
                keys: dict[Any, Any] = {k: format_id(v.position) for k, v in self.logs.items()}
                self.reading = True
                try:
                    found: Any = await client.xread(keys, count=COUNT, block=BLOCK_MS)
                finally:
                    self.reading = False
                self.reads += 1
                for key, raw in found or ():
                    log = self.logs.get(key.decode() if isinstance(key, bytes) else key)
                    if log is None or not raw:
                        continue  # its last stream closed meanwhile
                    entries = _decode_entries(raw)
                    log.position = entries[-1][0]
                    for subscription in log.subscriptions:
                        subscription.deliver(entries)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: every stream on it ends, and comes back
            for log in self.logs.values():
                for subscription in log.subscriptions:
                    subscription.fail(exc)
            self.logs.clear()
        finally:
            if self.task is None or self.task is asyncio.current_task():
                # (A cancelled read finishing late must not clear the state of its successor.)
                self.client_id = None
                self.reading = False
            await client.aclose()


class MemoryReader:
    """Embedded mode: the log is in this process (events.memory_log); waiting is polling,
    which costs next to nothing for the few clients one embedded server has."""

    POLL_SECONDS = 0.1

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id

    async def close(self) -> None:
        pass

    def _read(self, position: EntryId) -> tuple[LogState, list[Entry]]:
        log = events.memory_log
        with log.lock:  # state and entries at one instant, as the Redis MULTI gives them
            now_ms, first, last, trimmed = log.state(self.conversation_id)
            raw = log.after(self.conversation_id, position, COUNT)
        entries = [(entry_id, json.loads(data)) for entry_id, data in raw]
        return LogState(now_ms, first, last, trimmed), entries

    async def state(self) -> LogState:
        return self._read((2**63, 0))[0]

    async def read_checked(self, position: EntryId) -> tuple[LogState, list[Entry]]:
        return self._read(position)

    async def wait(
        self, position: EntryId, block_ms: int, until: asyncio.Future[Any] | None = None
    ) -> list[Entry] | None:
        import time

        deadline = time.monotonic() + block_ms / 1000
        while True:
            if until is not None and until.done():
                return None
            _, entries = self._read(position)
            if entries or time.monotonic() >= deadline:
                return entries
            if until is None:
                await asyncio.sleep(self.POLL_SECONDS)
            else:  # the access ending stops the wait at once, as on Redis
                await asyncio.wait({until}, timeout=self.POLL_SECONDS)


def reader_for(conversation_id: str) -> RedisReader | MemoryReader:
    if settings.REDIS_URL:
        return RedisReader(conversation_id)
    return MemoryReader(conversation_id)
