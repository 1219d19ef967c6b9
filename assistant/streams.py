"""Shared state of runs in flight: the streamed text so far, cancel flags, and who is viewing.

Production keeps it in Redis so any Daphne instance can give a reconnecting client the text so
far; embedded mode keeps it in this process's memory (one process serves everything there).
Async functions are for the agent and the consumer (event loop); sync ones for views.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    import redis

TTL_SECONDS = 3600  # a stream's text outlives its run by far; the saved message takes over
PRESENCE_STALE_SECONDS = 120


@dataclass(frozen=True)
class Snapshot:
    seq: int
    text: str


def _text_key(run_id: str) -> str:
    return f"tandem:run:{run_id}:text"


def _seq_key(run_id: str) -> str:
    return f"tandem:run:{run_id}:seq"


def cancel_key(run_id: str) -> str:
    return f"tandem:run:{run_id}:cancel"


def _presence_key(conversation_id: str) -> str:
    return f"tandem:presence:{conversation_id}"


# --- Redis clients ---------------------------------------------------------------------------
# redis.asyncio connections belong to the loop that made them, so keep one client per loop.
_async_clients: dict[int, Any] = {}
_sync_client: Any = None
_lock = threading.Lock()


def async_redis() -> Any:
    """This event loop's client (a pool of connections)."""
    import redis.asyncio

    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL,
            max_connections=1000,  # redis-py's default of 100 failed at 200 streams
            socket_timeout=None,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        _async_clients[id(loop)] = client
    return client


def sync_redis() -> redis.Redis:
    """The process's client for sync code (views, services, Celery threads)."""
    global _sync_client
    with _lock:
        if _sync_client is None:
            import redis

            _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5)
        return _sync_client


# --- In-memory store (embedded mode) ------------------------------------------------------------
class _Memory:
    def __init__(self) -> None:
        self.text: dict[str, list[str]] = {}
        self.seq: dict[str, int] = {}
        self.cancel: set[str] = set()
        self.presence: dict[str, dict[str, tuple[str, float]]] = {}
        self.lock = threading.Lock()


_memory = _Memory()


def _use_redis() -> bool:
    return bool(settings.REDIS_URL)


# --- Stream text -------------------------------------------------------------------------------
async def append(run_id: str, seq: int, text: str) -> None:
    """Record delta ``seq`` of a run. Called before the delta is published, so a snapshot read
    after joining the group covers every delta the client will then drop as old."""
    if not _use_redis():
        with _memory.lock:
            _memory.text.setdefault(run_id, []).append(text)
            _memory.seq[run_id] = seq
        return
    pipe = async_redis().pipeline(transaction=True)
    queue_append(pipe, run_id, seq, text)
    await pipe.execute()


async def seed(run_id: str, seq: int, text: str) -> None:
    """Start a resumed run's stream from its saved text and delta number (a parked run's
    stream was discarded; viewers joining now must still get the text so far)."""
    if not _use_redis():
        with _memory.lock:
            _memory.text[run_id] = [text]
            _memory.seq[run_id] = seq
        return
    pipe = async_redis().pipeline(transaction=True)
    pipe.set(_text_key(run_id), text, ex=TTL_SECONDS)
    pipe.set(_seq_key(run_id), seq, ex=TTL_SECONDS)
    await pipe.execute()


def queue_append(pipe, run_id: str, seq: int, text: str) -> None:
    """Add the writes of one delta to a Redis MULTI pipeline (text and number change together,
    so a snapshot never has one without the other)."""
    pipe.append(_text_key(run_id), text)
    pipe.set(_seq_key(run_id), seq, ex=TTL_SECONDS)
    if seq == 1:
        pipe.expire(_text_key(run_id), TTL_SECONDS)


def queue_rewrite(pipe, run_id: str, seq: int, text: str) -> None:
    """The whole text through delta ``seq`` again (Redis lost it: see events.DeltaBatcher)."""
    pipe.set(_text_key(run_id), text, ex=TTL_SECONDS)
    pipe.set(_seq_key(run_id), seq, ex=TTL_SECONDS)


def delta_keys(run_id: str) -> list[str]:
    """The keys one delta writes (text, number), for events.DELTA_SCRIPT."""
    return [_text_key(run_id), _seq_key(run_id)]


def _decode(seq: Any, text: Any) -> Snapshot:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return Snapshot(int(seq or 0), text or "")


async def snapshot(run_id: str) -> Snapshot:
    if not _use_redis():
        return _memory_snapshot(run_id)
    seq, text = await async_redis().mget(_seq_key(run_id), _text_key(run_id))
    return _decode(seq, text)


def snapshot_sync(run_id: str) -> Snapshot:
    if not _use_redis():
        return _memory_snapshot(run_id)
    seq, text = sync_redis().mget(_seq_key(run_id), _text_key(run_id))
    return _decode(seq, text)


def _memory_snapshot(run_id: str) -> Snapshot:
    with _memory.lock:
        return Snapshot(_memory.seq.get(run_id, 0), "".join(_memory.text.get(run_id, [])))


async def discard(run_id: str) -> None:
    """Forget a finished run's stream (its saved message now says the same)."""
    if not _use_redis():
        with _memory.lock:
            _memory.text.pop(run_id, None)
            _memory.seq.pop(run_id, None)
            _memory.cancel.discard(run_id)
        return
    # Keep the text a little while: a client that read the page just before the run ended
    # still resyncs from it.
    pipe = async_redis().pipeline(transaction=False)
    pipe.expire(_text_key(run_id), 60)
    pipe.expire(_seq_key(run_id), 60)
    pipe.delete(cancel_key(run_id))
    await pipe.execute()


# --- Cancel flags ---------------------------------------------------------------------------
def request_cancel(run_id: str) -> None:
    if not _use_redis():
        with _memory.lock:
            _memory.cancel.add(run_id)
        return
    sync_redis().set(cancel_key(run_id), "1", ex=TTL_SECONDS)


def is_cancel_requested_sync(run_id: str) -> bool:
    if not _use_redis():
        return run_id in _memory.cancel
    return bool(sync_redis().exists(cancel_key(run_id)))


async def is_cancel_requested(run_id: str) -> bool:
    if not _use_redis():
        return run_id in _memory.cancel
    return bool(await async_redis().exists(cancel_key(run_id)))


# --- Presence ----------------------------------------------------------------------------------
async def presence_join(conversation_id: str, channel: str, user_name: str) -> None:
    """Note (or refresh) one connection's viewer."""
    now = time.time()
    if not _use_redis():
        with _memory.lock:
            _memory.presence.setdefault(conversation_id, {})[channel] = (user_name, now)
        return
    key = _presence_key(conversation_id)
    pipe = async_redis().pipeline(transaction=False)
    pipe.hset(key, channel, json.dumps([user_name, now]))
    pipe.expire(key, TTL_SECONDS)
    await pipe.execute()


async def presence_leave(conversation_id: str, channel: str) -> None:
    if not _use_redis():
        with _memory.lock:
            _memory.presence.get(conversation_id, {}).pop(channel, None)
        return
    await async_redis().hdel(_presence_key(conversation_id), channel)


async def presence_list(conversation_id: str) -> list[str]:
    """Names of the people viewing, each once, sorted. Entries not refreshed for a while are
    ignored: a Daphne process that died never said goodbye for its connections."""
    cutoff = time.time() - PRESENCE_STALE_SECONDS
    if not _use_redis():
        with _memory.lock:
            entries = list(_memory.presence.get(conversation_id, {}).values())
    else:
        raw = await async_redis().hgetall(_presence_key(conversation_id))
        entries = [tuple(json.loads(value)) for value in raw.values()]
    return sorted({name for name, seen in entries if seen >= cutoff})
