"""API keys: making them, and finding the key a request presents.

A key reads ``tdm_<prefix>_<secret>``: 8 lowercase letters and digits that identify it in lists
(not secret), then 43 URL-safe characters from ``secrets.token_urlsafe(32)`` (256 bits). Only
the SHA-256 of the whole key is stored; a key is found by that hash, so a guess costs one
indexed lookup and reveals nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from datetime import timedelta

from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from accounts.models import Membership

from .models import ApiKey

PREFIX_ALPHABET = string.ascii_lowercase + string.digits
PREFIX_CHARS = 8
SECRET_BYTES = 32
KEY_RE = re.compile(r"^tdm_([a-z0-9]{8})_([A-Za-z0-9_-]{32,128})$")
# last_used_at is written at most this often per key: one write per request would make every
# API call a database write.
TOUCH_EVERY = timedelta(minutes=1)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """(the key, its prefix, its hash)."""
    prefix = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_CHARS))
    raw = f"tdm_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return raw, prefix, hash_key(raw)


def looks_like_key(raw: str) -> bool:
    return bool(KEY_RE.match(raw))


def find_usable(raw: str) -> tuple[ApiKey, str] | None:
    """The key ``raw`` stands for and its owner's role in the key's team, if the key may be
    used now: well-formed, known, not revoked, not expired, its owner active and still a
    member of the team. None otherwise (the caller answers 401 the same way for all)."""
    if not looks_like_key(raw):
        return None
    role = Membership.objects.filter(team=OuterRef("team"), user=OuterRef("user")).values("role")
    key = (
        ApiKey.objects.select_related("team", "user")
        .annotate(role=Subquery(role[:1]))
        .filter(key_hash=hash_key(raw), revoked_at__isnull=True)
        .filter(Q(expires__isnull=True) | Q(expires__gt=timezone.now()))
        .first()
    )
    if key is None or key.role is None or not key.user.is_active:
        return None
    return key, key.role


def touch(key: ApiKey) -> None:
    """Note that the key was used, at most once a minute. The conditional UPDATE keeps it so
    across processes too: of many requests at once, one writes."""
    now = timezone.now()
    if key.last_used_at is not None and now - key.last_used_at < TOUCH_EVERY:
        return
    ApiKey.objects.filter(pk=key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - TOUCH_EVERY)
    ).update(last_used_at=now)
    key.last_used_at = now
