"""The client's address: the one function every limiter and log line goes through.

Behind a reverse proxy the socket peer is the proxy, and the client is in X-Forwarded-For —
but that header's left part is whatever the client sent (nginx's
``$proxy_add_x_forwarded_for`` appends to it), so reading its first value lets anyone pick
the address a limit counts against: dodge a limit by rotating it, or lock someone else out by
naming them. Only addresses added by proxies the operator lists in TRUSTED_PROXIES (IPs or
CIDRs) are believed: the chain is read from the right, skipping trusted proxies, and the first
address that isn't one is the client. Without TRUSTED_PROXIES, or when the peer itself isn't a
trusted proxy, the client is the socket peer and X-Forwarded-For is ignored.

``ClientAddressMiddleware`` (ASGI, config/asgi.py) puts the result in ``scope["client"]``, so
``request.META["REMOTE_ADDR"]`` and consumers' scopes hold it; read it through ``of_request``
and ``of_scope``. Daphne's own ``--proxy-headers`` (first value wins) is not used:
config/serve.py drops the flag.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.cache
def _networks(raw: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in raw)


def trusted_networks() -> tuple[Network, ...]:
    return _networks(tuple(settings.TRUSTED_PROXIES or ()))


def parse_address(value: str | None) -> Address | None:
    """An address from a peer or a forwarded hop: ``1.2.3.4``, ``::1``, ``[::1]``, ``[::1]:80``,
    ``1.2.3.4:80``; None when it is none of these (``unknown``, a name, garbage)."""
    text = (value or "").strip().strip('"')
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_ip(peer: str | None, forwarded_for: Iterable[str] = ()) -> str | None:
    """The client's address, from the socket peer and the X-Forwarded-For header values (all
    of them, in order, when it came more than once)."""
    peer_address = parse_address(peer)
    if peer_address is None:
        return peer or None
    networks = trusted_networks()
    if not networks or not _trusted(peer_address, networks):
        return str(peer_address)
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    client = peer_address
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            # Not an address where a trusted proxy wrote one: the proxy in front of it is the
            # last thing known, and it is where the request came from.
            return str(client)
        client = address
        if not _trusted(address, networks):
            return str(address)
    return str(client)  # every hop is a trusted proxy: the left-most one


def _headers(scope, name: bytes) -> list[str]:
    return [
        value.decode("latin-1") for key, value in scope.get("headers") or () if key.lower() == name
    ]


def resolve_scope(scope: dict) -> dict:
    """The scope with ``client`` set to the client's address (and ``scheme`` from
    X-Forwarded-Proto when a trusted proxy sent the request)."""
    client = scope.get("client") or None
    peer = client[0] if client else None
    ip = client_ip(peer, _headers(scope, b"x-forwarded-for"))
    resolved = dict(scope)
    resolved["client"] = (ip, client[1] if client else 0) if ip else client
    peer_address = parse_address(peer)
    networks = trusted_networks()
    if peer_address is not None and networks and _trusted(peer_address, networks):
        proto = (_headers(scope, b"x-forwarded-proto") or [""])[-1].split(",")[-1].strip().lower()
        if scope.get("type") == "http" and proto in ("http", "https"):
            resolved["scheme"] = proto
        elif scope.get("type") == "websocket" and proto in ("http", "https"):
            resolved["scheme"] = "wss" if proto == "https" else "ws"
    return resolved


class ClientAddressMiddleware:
    """ASGI middleware: every HTTP request and WebSocket sees the resolved client address."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") in ("http", "websocket"):
            scope = resolve_scope(scope)
        return await self.app(scope, receive, send)


def of_request(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def of_scope(scope) -> str | None:
    client = scope.get("client") or None
    return client[0] if client else None
