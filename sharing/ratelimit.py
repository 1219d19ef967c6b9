"""Rate limit on share-token guessing.

Failed lookups (tokens that match no link) are counted per client in a fixed one-minute window;
past the limit every lookup from that client is refused with 429, valid tokens included —
otherwise the answer itself (429 for a wrong token, 200 for a right one) would keep telling a
guesser which tokens work. Counting is per client, never per token, so varying the token gains
nothing. IPv6 clients count per /64, the block one machine usually gets.

Production counts in Redis (shared by every Daphne process); embedded mode in memory.
"""

from __future__ import annotations

import ipaddress
import threading
import time

from django.conf import settings

WINDOW_SECONDS = 60
KEY_PREFIX = "tandem:share:fail:"


def limit() -> int:
    return settings.SHARE_FAILED_LOOKUPS_PER_MINUTE


def client_of(ip: str | None) -> str:
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return "unknown"
    if address.version == 6 and not address.ipv4_mapped:
        return str(ipaddress.ip_network(f"{address}/64", strict=False).network_address) + "/64"
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


def _window(now: float) -> tuple[int, int]:
    """The current window's number and the seconds until it ends (at least 1)."""
    number = int(now // WINDOW_SECONDS)
    return number, max(1, int((number + 1) * WINDOW_SECONDS - now + 0.999))


def _key(client: str, number: int) -> str:
    return f"{KEY_PREFIX}{client}:{number}"


# --- Embedded mode -------------------------------------------------------------------------------
_memory: dict[str, int] = {}
_memory_lock = threading.Lock()
_client = None


def _redis():
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5)
    return _client


def retry_after(ip: str | None) -> int | None:
    """Seconds to wait when the client is over the limit, else None."""
    number, remaining = _window(time.time())
    key = _key(client_of(ip), number)
    if settings.REDIS_URL:
        count = int(_redis().get(key) or 0)
    else:
        with _memory_lock:
            count = _memory.get(key, 0)
    return remaining if count >= limit() else None


def record_failure(ip: str | None) -> None:
    number, _ = _window(time.time())
    key = _key(client_of(ip), number)
    if settings.REDIS_URL:
        pipe = _redis().pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS * 2)
        pipe.execute()
        return
    with _memory_lock:
        for old in [k for k in _memory if not k.endswith(f":{number}")]:
            del _memory[old]
        _memory[key] = _memory.get(key, 0) + 1


def reset(ip: str | None = None) -> None:
    """Forget the counts (tests; an operator unblocking a client)."""
    if settings.REDIS_URL:
        pattern = f"{KEY_PREFIX}{client_of(ip)}:*" if ip else f"{KEY_PREFIX}*"
        keys = list(_redis().scan_iter(pattern))
        if keys:
            _redis().delete(*keys)
        return
    with _memory_lock:
        _memory.clear()
