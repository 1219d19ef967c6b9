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

import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from assistant import events

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
    """One reader per event stream, on a connection of its own: XREAD BLOCK holds it while
    the stream is idle, and closing it is how a reader that goes away stops waiting."""

    def __init__(self, conversation_id: str) -> None:
        import redis.asyncio

        self.key = events.log_key(conversation_id)
        self.client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=5,
            socket_timeout=None,  # blocking reads wait longer than any sensible timeout
            max_connections=1,
            client_name="tandem-sse",
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def state(self) -> LogState:
        return (await self._read(None))[0]

    async def read_checked(self, position: EntryId) -> tuple[LogState, list[Entry]]:
        """The log's state and the entries after ``position``, at one instant (one MULTI)."""
        return await self._read(position)

    async def _read(self, position: EntryId | None) -> tuple[LogState, list[Entry]]:
        pipe = self.client.pipeline(transaction=True)
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

    async def wait(self, position: EntryId, block_ms: int) -> list[Entry]:
        """Entries after ``position``, waiting up to ``block_ms`` for the first one."""
        # Any: redis-py types the reply for RESP3 (a dict) too; this connection speaks RESP2.
        found: Any = await self.client.xread(
            {self.key: format_id(position)}, count=COUNT, block=max(1, block_ms)
        )
        return _decode_entries(found[0][1]) if found else []


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

    async def wait(self, position: EntryId, block_ms: int) -> list[Entry]:
        import asyncio
        import time

        deadline = time.monotonic() + block_ms / 1000
        while True:
            _, entries = self._read(position)
            if entries or time.monotonic() >= deadline:
                return entries
            await asyncio.sleep(self.POLL_SECONDS)


def reader_for(conversation_id: str) -> RedisReader | MemoryReader:
    if settings.REDIS_URL:
        return RedisReader(conversation_id)
    return MemoryReader(conversation_id)
