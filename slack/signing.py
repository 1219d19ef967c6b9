"""Slack's request signing: every request from Slack carries X-Slack-Request-Timestamp and
X-Slack-Signature = "v0=" + HMAC-SHA256(signing secret, "v0:{timestamp}:{raw body}")."""

from __future__ import annotations

import hashlib
import hmac
import time

from django.conf import settings

MAX_AGE_SECONDS = 5 * 60  # older (or from further ahead) is a replay; Slack says 5 minutes


def signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify(
    body: bytes, timestamp: str | None, given: str | None, *, now: float | None = None
) -> bool:
    secret = settings.SLACK_SIGNING_SECRET
    if not secret or not timestamp or not given:
        return False  # no secret configured: nothing can be proven to come from Slack
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - sent) > MAX_AGE_SECONDS:
        return False
    expected = signature(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), given.encode())
