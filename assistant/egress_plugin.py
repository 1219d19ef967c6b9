"""The egress proxy's rule, as a proxy.py plugin: CONNECT and plain HTTP only to allowlisted
hosts, and never to a non-public address unless the site allows it (tests).

Loaded by the proxy.py process the worker starts (``assistant.egress``), not by Django: of
Tandem it imports only ``assistant.hosts`` (the standard library alone). Its configuration
comes as proxy.py flags defined here.

The name is resolved here, checked, and the checked address is the one proxy.py connects to
(``resolve_dns``): a name that resolves to a public address when checked and to 127.0.0.1 a
moment later (DNS rebinding) can't reach the worker's loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from proxy.common.flag import flags
from proxy.http.exception import HttpRequestRejected
from proxy.http.proxy import HttpProxyBasePlugin

from assistant import hosts

flags.add_argument(
    "--tandem-allow",
    type=str,
    default="",
    help="Comma-separated hosts (host, host:port, *.domain) the sandbox may reach.",
)
flags.add_argument(
    "--tandem-allow-private",
    action="store_true",
    default=False,
    help="Let allowlisted names resolve to loopback/private/link-local addresses (tests).",
)

REFUSED = 403
DEFAULT_PORTS = (80, 443)


def allowed(host: str, port: int, allowlist: list[str]) -> bool:
    """Whether ``host:port`` is on the allowlist (case-insensitive, no trailing dot)."""
    host = host.lower().rstrip(".")
    for raw in allowlist:
        entry = raw.strip().lower()
        if not entry:
            continue
        name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        ports = (int(entry_port),) if entry_port else DEFAULT_PORTS
        if port not in ports:
            continue
        if hosts.matches(host, name):
            return True
    return False


def _has_port(entry: str) -> bool:
    head, sep, tail = entry.rpartition(":")
    return bool(sep) and tail.isdigit() and "]" not in tail and ":" not in head


def public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def refusal(text: str) -> HttpRequestRejected:
    """A 403 whose reason phrase says why: pip and npm print the status line of a refused
    CONNECT, so the sentence ends up in the setup's output."""
    reason = ("Tandem egress proxy: " + text).encode("ascii", "replace")
    return HttpRequestRejected(
        status_code=REFUSED,
        reason=reason,
        headers={b"Content-Type": b"text/plain"},
        body=reason + b"\n",
    )


class AllowlistPlugin(HttpProxyBasePlugin):
    """One instance per client connection (proxy.py makes one per handler)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._address: str | None = None

    def before_upstream_connection(self, request: Any) -> Any:
        host = (request.host or b"").decode("ascii", "replace")
        port = int(request.port or 0)
        listed = [e for e in (self.flags.tandem_allow or "").split(",") if e.strip()]
        if not host or not allowed(host, port, listed):
            raise refusal(f"{host}:{port} (not on the allowlist of package registries)")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise refusal(f"{host}:{port} (the name does not resolve)") from exc
        addresses = [str(info[4][0]) for info in infos]
        if not self.flags.tandem_allow_private:
            addresses = [a for a in addresses if public(a)]
            if not addresses:
                raise refusal(f"{host}:{port} (it resolves to a private or local address)")
        self._address = addresses[0]
        return request

    def resolve_dns(self, host: str, port: int) -> tuple[str | None, Any]:
        return self._address, None
