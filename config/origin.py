"""The WebSocket handshake's Origin must be this site: scheme, host and port.

Channels' AllowedHostsOriginValidator compares the Origin's host name with ALLOWED_HOSTS and
ignores the port, so a page served from another port of the same host (another app, a dev
server) could open a member's socket with their cookies. Here an Origin is accepted when it is
exactly SITE_URL or one of CSRF_TRUSTED_ORIGINS, or the origin the request itself was made to
(its Host header, host in ALLOWED_HOSTS, the same port — a Host without a port means the
default port of the Origin's scheme, as nginx's ``$host`` passes it).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(value: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_allowed(scope) -> bool:
    raw = _header(scope, b"origin")
    origin = _origin(raw) if raw else None
    if origin is None:
        return False
    configured = [settings.SITE_URL, *settings.CSRF_TRUSTED_ORIGINS]
    if any(_origin(item) == origin for item in configured if item):
        return True
    host = _header(scope, b"host") or ""
    domain, port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    expected_port = int(port) if port else DEFAULT_PORTS[origin[0]]
    return origin[1:] == (domain.strip("[]"), expected_port)


class SameOriginValidator:
    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
