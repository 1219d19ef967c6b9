"""Whose address a limit counts against (issue 12, item 6).

X-Forwarded-For is believed only from the proxies in TRUSTED_PROXIES, read from the right;
without any, the socket peer is the client. Against a real Daphne started the way the
Procfile used to start it (``--proxy-headers``, which believes the header's first value):
rotating X-Forwarded-For no longer dodges the share-token limiter, and a guesser behind the
trusted proxy can't get a chosen address locked out."""

from __future__ import annotations

import secrets

import httpx
import pytest

from config.clientip import client_ip, resolve_scope
from config.serve import drop_proxy_headers
from tests.conftest import start_web, stop_web


def test_without_trusted_proxies_the_peer_is_the_client(settings):
    settings.TRUSTED_PROXIES = []
    assert client_ip("203.0.113.5", ["198.51.100.1"]) == "203.0.113.5"
    assert client_ip("127.0.0.1", ["198.51.100.1, 10.0.0.1"]) == "127.0.0.1"
    assert client_ip("::ffff:203.0.113.5", []) == "203.0.113.5"
    assert client_ip(None, ["198.51.100.1"]) is None


def test_trusted_proxies_are_skipped_from_the_right(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "127.0.0.1", "fd00::/8"]
    # nginx appends the peer it saw: the client's own values sit to the left and are ignored.
    assert client_ip("10.0.0.2", ["6.6.6.6, 203.0.113.9"]) == "203.0.113.9"
    assert client_ip("10.0.0.2", ["6.6.6.6", "203.0.113.9"]) == "203.0.113.9"  # two headers
    # Two proxies (a load balancer, then nginx), both trusted.
    assert client_ip("127.0.0.1", ["6.6.6.6, 203.0.113.9, 10.1.1.1"]) == "203.0.113.9"
    assert client_ip("fd00::1", ["2001:db8::7"]) == "2001:db8::7"
    assert client_ip("10.0.0.2", ["[2001:db8::7]:443"]) == "2001:db8::7"
    # A peer that isn't a trusted proxy: its header means nothing.
    assert client_ip("198.51.100.20", ["203.0.113.9"]) == "198.51.100.20"
    # No header, or garbage where a proxy's address should be: the proxy is all we know.
    assert client_ip("10.0.0.2", []) == "10.0.0.2"
    assert client_ip("10.0.0.2", ["203.0.113.9, unknown"]) == "10.0.0.2"
    # Every hop trusted: the left-most one.
    assert client_ip("10.0.0.2", ["10.9.9.9"]) == "10.9.9.9"


def test_the_asgi_scope_gets_the_resolved_address(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    headers = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9"), (b"x-forwarded-proto", b"https")]
    http = resolve_scope({"type": "http", "client": ("127.0.0.1", 5000), "headers": headers})
    assert http["client"] == ("203.0.113.9", 5000) and http["scheme"] == "https"
    ws = resolve_scope({"type": "websocket", "client": ("127.0.0.1", 5000), "headers": headers})
    assert ws["client"][0] == "203.0.113.9" and ws["scheme"] == "wss"
    direct = resolve_scope({"type": "http", "client": ("198.51.100.3", 1), "headers": headers})
    assert direct["client"] == ("198.51.100.3", 1) and "scheme" not in direct


def test_serve_drops_daphnes_proxy_headers():
    args = ["-b", "0.0.0.0", "--proxy-headers", "-p", "8000", "--proxy-headers-host", "X-Real"]
    assert drop_proxy_headers(args) == ["-b", "0.0.0.0", "-p", "8000"]


@pytest.fixture
def fresh_limits():
    from sharing import ratelimit

    ratelimit.reset()
    yield
    ratelimit.reset()


def _guess() -> str:
    return "/s/" + secrets.token_urlsafe(32) + "/"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_forwarded_for_from_the_client_does_not_move_the_share_limiter(tmp_path, fresh_limits):
    env = {"SHARE_FAILED_LOOKUPS_PER_MINUTE": "5", "TRUSTED_PROXIES": ""}
    base, proc, log = start_web(tmp_path, extra_env=env, args=["--proxy-headers"])
    try:
        with httpx.Client(base_url=base, timeout=20) as client:
            codes = [
                client.get(_guess(), headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
                for i in range(8)
            ]
    finally:
        stop_web(proc)
    # Counted against the socket peer, whatever the header said: the sixth guess is refused.
    assert codes[:5] == [404] * 5, log.read_text()[-2000:]
    assert codes[5:] == [429] * 3


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_behind_a_trusted_proxy_a_chosen_address_cannot_be_locked_out(tmp_path, fresh_limits):
    # Daphne behind "nginx" at 127.0.0.1: nginx appends the address it saw to whatever the
    # client sent.
    env = {"SHARE_FAILED_LOOKUPS_PER_MINUTE": "5", "TRUSTED_PROXIES": "127.0.0.1"}
    base, proc, log = start_web(tmp_path, extra_env=env)
    try:
        with httpx.Client(base_url=base, timeout=20) as client:
            attacker = [
                client.get(
                    _guess(), headers={"X-Forwarded-For": "198.51.100.77, 203.0.113.50"}
                ).status_code
                for _ in range(7)
            ]
            victim = client.get(_guess(), headers={"X-Forwarded-For": "198.51.100.77"})
            other = client.get(_guess(), headers={"X-Forwarded-For": "203.0.113.51"})
    finally:
        stop_web(proc)
    assert attacker == [404] * 5 + [429] * 2, log.read_text()[-2000:]
    assert victim.status_code == 404  # not locked out by someone naming them
    assert other.status_code == 404
