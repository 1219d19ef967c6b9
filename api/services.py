"""Writes for API keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from accounts import audit
from accounts.models import Membership

from .keys import new_key
from .models import ApiKey, Scope


class ApiKeyError(Exception):
    """A key that cannot be made, with a message for the person."""


@dataclass
class NewKey:
    key: ApiKey
    raw: str  # shown once, never stored


def apikey_create(
    *,
    membership: Membership,
    name: str = "",
    scope: str = Scope.READ,
    expires: datetime | None = None,
) -> NewKey:
    """A key for the member's team. ``expires`` is a datetime or None (never)."""
    name = name.strip()
    if len(name) > 100:
        raise ApiKeyError("A name can have at most 100 characters.")
    if scope not in Scope.values:
        raise ApiKeyError("The scope is read or write.")
    if expires is not None:
        if not isinstance(expires, datetime) or timezone.is_naive(expires):
            raise ApiKeyError("The expiry must be a date and time with a time zone.")
        if expires <= timezone.now():
            raise ApiKeyError("The expiry must be in the future.")
    raw, prefix, digest = new_key()
    key = ApiKey.objects.create(
        team=membership.team,
        user=membership.user,
        name=name,
        prefix=prefix,
        key_hash=digest,
        scope=scope,
        expires=expires,
    )
    audit.record(
        audit.Action.APIKEY_CREATED,
        team=membership.team,
        actor=membership.user,
        obj=key,
        label=_label(key),
        after={"scope": scope, "expires": expires.isoformat() if expires else None},
    )
    return NewKey(key, raw)


def _label(key: ApiKey) -> str:
    # The prefix is what the keys page shows to tell keys apart; the key itself is never kept.
    return f"{key.name or 'unnamed'} ({key.prefix}…)"


def apikey_revoke(*, key: ApiKey) -> bool:
    """Revoke at once: the next request with the key is refused. Whether this call did it."""
    revoked = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    key.refresh_from_db(fields=["revoked_at"])
    if revoked:
        audit.record(audit.Action.APIKEY_REVOKED, team=key.team, obj=key, label=_label(key))
    return bool(revoked)
