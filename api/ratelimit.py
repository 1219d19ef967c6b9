"""Requests per minute, per person and per API key, counted in Redis so that every web process
shares one count.

A fixed window per bucket that opens with the bucket's first request and lasts a minute. The
check and the count are one Lua script, so concurrent requests from any number of processes
can't both see "one left" and both pass: the script runs atomically in Redis. A refused request
is not counted (a client backing off isn't pushed further back). A limit of 0 means no limit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

log = logging.getLogger(__name__)

WINDOW_MS = 60_000

# KEYS: the buckets; ARGV[1]: the window in ms, ARGV[1 + i]: the limit of KEYS[i].
# Returns {1, remaining} when counted, {0, ms until the full bucket's window ends} when not.
SCRIPT = """
local window = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i + 1]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      redis.call('PEXPIRE', key, window)
      ttl = window
    end
    return {0, ttl}
  end
end
local remaining = -1
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then
    redis.call('PEXPIRE', key, window)
  end
  local left = tonumber(ARGV[i + 1]) - count
  if remaining < 0 or left < remaining then
    remaining = left
  end
end
return {1, remaining}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int  # the tightest limit that applied (0: none did)
    remaining: int
    retry_after: int = 0  # seconds, when refused


def buckets_for(user_id: int, key_id: int | None) -> list[tuple[str, int]]:
    """The (bucket, limit) pairs a request counts against; unlimited ones are left out."""
    buckets = []
    if settings.API_RATE_PER_MINUTE > 0:
        buckets.append((f"tandem:rl:user:{user_id}", settings.API_RATE_PER_MINUTE))
    if key_id is not None and settings.API_KEY_RATE_PER_MINUTE > 0:
        buckets.append((f"tandem:rl:key:{key_id}", settings.API_KEY_RATE_PER_MINUTE))
    return buckets


def hit(buckets: list[tuple[str, int]]) -> Verdict:
    """Count one request against every bucket, or against none if any of them is full."""
    if not buckets:
        return Verdict(True, 0, 0)
    limit = min(limit for _, limit in buckets)
    if not settings.REDIS_URL:
        return _memory.hit(buckets, limit)
    try:
        allowed, value = _script()(
            keys=[key for key, _ in buckets], args=[WINDOW_MS, *(n for _, n in buckets)]
        )
    except Exception:
        # Without Redis nothing else works either; don't add refusals to that outage.
        log.exception("Rate limit check failed; letting the request through")
        return Verdict(True, limit, 0)
    if allowed:
        return Verdict(True, limit, int(value))
    return Verdict(False, limit, 0, max(1, math.ceil(int(value) / 1000)))


_lock = threading.Lock()
_client: redis.Redis | None = None
_registered: Script | None = None


def _script() -> Script:
    global _client, _registered
    with _lock:
        if _registered is None:
            import redis

            _client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5)
            # EVALSHA, falling back to EVAL once if the server doesn't have the script yet.
            _registered = _client.register_script(SCRIPT)
        return _registered


class _Memory:
    """Embedded mode: one process serves everything, so its memory is the shared count."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[int, float]] = {}  # key -> (count, window end)

    def hit(self, buckets: list[tuple[str, int]], limit: int) -> Verdict:
        now = time.monotonic()
        with self.lock:
            for key, cap in buckets:
                count, end = self.buckets.get(key, (0, 0.0))
                if end > now and count >= cap:
                    return Verdict(False, limit, 0, max(1, math.ceil(end - now)))
            remaining = None
            for key, cap in buckets:
                count, end = self.buckets.get(key, (0, 0.0))
                if end <= now:
                    count, end = 0, now + WINDOW_MS / 1000
                self.buckets[key] = (count + 1, end)
                left = cap - count - 1
                remaining = left if remaining is None else min(remaining, left)
            if len(self.buckets) > 10_000:
                self.buckets = {k: v for k, v in self.buckets.items() if v[1] > now}
            return Verdict(True, limit, remaining or 0)


_memory = _Memory()
