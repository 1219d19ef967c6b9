"""Host names against allowlist patterns: "docs.example.com" is that host, "*.example.com" every
name under it (not the domain itself). One rule for the sandbox's egress proxy and fetch_url."""

from __future__ import annotations


def matches(host: str, pattern: str) -> bool:
    """Case-insensitive, trailing dots ignored; ``pattern`` carries no port."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern
