"""Where a team's model calls may go (issue 12, item 7).

A team admin sets an API base URL, and Tandem then sends the team's key there from the server —
on Test connection and on every run. Unchecked, that is a blind SSRF: the cloud's metadata
service, the server's own loopback services, the private network.

- Link-local and metadata addresses (169.254.0.0/16, fe80::/10, 100.100.100.200,
  fd00:ec2::254, 168.63.129.16), unspecified (0.0.0.0/8, ::), multicast and reserved addresses
  are refused always.
- Private and loopback addresses (10/8, 172.16/12, 192.168/16, 127/8, ::1, fc00::/7, the shared
  100.64/10) are refused unless the operator sets LLM_ALLOW_PRIVATE_BASES (a local Ollama or
  vLLM is a normal set-up).
- Checked when saved (IP literals and ``localhost`` names: a form error) and before every call
  (the host name resolved, every address it resolves to checked: a rebinding name that
  answered a public address when saved is caught here), refused with a sentence.

The site-wide LLM_API_BASE comes from the operator's environment and is not checked.

Streaming replies (the lean client, llm/direct.py) also check at connect time: its HTTP
client resolves through ``CheckingResolver``, so the addresses it connects to are the ones
checked, whatever a rebinding name answers between the two lookups. Calls that go through
litellm (Test connection, providers the lean client doesn't speak) have only the check right
before the call: a name with a zero TTL that changes in those milliseconds could slip through.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_REFUSED = [
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "169.254.0.0/16",  # link-local: AWS/GCP/Azure/OpenStack metadata at 169.254.169.254
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure wire server
        "192.0.0.0/24",  # IETF protocol assignments
        "224.0.0.0/4",
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",
        "fe80::/10",  # link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",
    )
]
METADATA_NAMES = {"metadata", "metadata.google.internal", "instance-data", "instance-data.ec2"}


class BaseRefused(ValueError):
    """The sentence says why, in words a team admin can act on."""


@dataclass(frozen=True)
class Rules:
    """Who the check is for, as its sentences say it: the teams' model bases by default;
    fetch_url (assistant/tools/web.py) has its own words and its own switch."""

    what: str = "The API base"
    sent: str = "model calls"
    switch: str = "LLM_ALLOW_PRIVATE_BASES"
    example: str = " (for a local Ollama, say)"

    def allow_private(self) -> bool:
        return bool(getattr(settings, self.switch))


MODEL_BASES = Rules()


def allow_private() -> bool:
    return MODEL_BASES.allow_private()


def _normalise(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return address.ipv4_mapped
        if address.sixtofour:
            return address.sixtofour
    return address


def check_address(address: Address, host: str, rules: Rules = MODEL_BASES) -> None:
    address = _normalise(address)
    if any(address.version == net.version and address in net for net in ALWAYS_REFUSED):
        raise BaseRefused(
            f"{rules.what} {host} points at {address}, a link-local, metadata or reserved "
            f"address: {rules.sent} can't be sent there."
        )
    if (
        address.is_loopback
        or address.is_private
        or address in ipaddress.ip_network("100.64.0.0/10")
    ):
        if not rules.allow_private():
            raise BaseRefused(
                f"{rules.what} {host} points at {address}, a private or loopback address, and "
                f"this server doesn't allow {rules.sent} to its own network. The operator can "
                f"allow it with {rules.switch}=true{rules.example}."
            )
    elif not address.is_global and not rules.allow_private():
        raise BaseRefused(f"{rules.what} {host} points at {address}, which isn't a public address.")


def _host_of(url: str, rules: Rules = MODEL_BASES) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise BaseRefused(f"{rules.what} must be an http:// or https:// URL.")
    if not parts.hostname:
        raise BaseRefused(f"{rules.what} has no host name.")
    return parts.hostname.rstrip(".").lower()


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # inet_aton's forms: 2130706433, 0x7f.1, 127.1 all mean 127.0.0.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def check_saved(url: str, rules: Rules = MODEL_BASES) -> None:
    """At save time, without the network: the scheme, IP literals, and names that can only mean
    this machine or a metadata service. Raises BaseRefused."""
    if not url.strip():
        return
    host = _host_of(url, rules)
    literal = _literal(host)
    if literal is not None:
        check_address(literal, host, rules)
    elif host in METADATA_NAMES:
        raise BaseRefused(f"{rules.what} {host} is a cloud metadata service.")
    elif host == "localhost" or host.endswith(".localhost"):
        check_address(ipaddress.ip_address("127.0.0.1"), host, rules)


async def check_before_call(url: str, rules: Rules = MODEL_BASES) -> None:
    """Right before a call: resolve the host and check every address. Raises BaseRefused."""
    check_saved(url, rules)
    host = _host_of(url, rules)
    if _literal(host) is not None:
        return
    port = urlsplit(url.strip()).port or 443
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # unresolvable: the call itself fails with "unreachable"
    for *_, sockaddr in infos:
        check_address(ipaddress.ip_address(sockaddr[0].split("%", 1)[0]), host, rules)


# Set by the lean client for a call to a team's base: its resolver then checks every address.
checking: contextvars.ContextVar[bool] = contextvars.ContextVar("llm_base_checking", default=False)


def _resolver_base() -> type[Any]:
    from aiohttp.resolver import DefaultResolver

    return DefaultResolver


if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

    # DefaultResolver is an alias (ThreadedResolver, or AsyncResolver with aiodns) mypy cannot
    # subclass; the threaded one stands for both.
    from aiohttp.resolver import ThreadedResolver as _ResolverBase
else:
    _ResolverBase = _resolver_base()


class CheckingResolver(_ResolverBase):
    """aiohttp's resolver, refusing addresses a team's base must not reach (when ``checking``
    is set for the call, or always when made with ``rules``): the check and the connection use
    the same lookup."""

    def __init__(self, *args: Any, rules: Rules | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rules = rules

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await super().resolve(host, port, family)
        if self.rules is not None or checking.get():
            for info in infos:
                address = ipaddress.ip_address(info["host"].split("%", 1)[0])
                check_address(address, host, self.rules or MODEL_BASES)
        return infos
