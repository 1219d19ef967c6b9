"""Permission-scoped reads of API keys: a member sees their own keys, an admin all of the team's."""

from __future__ import annotations

from uuid import UUID

from django.db.models import F, QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import Membership

from .models import ApiKey


def keys_visible_to(membership: Membership) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.filter(team=membership.team).select_related("user")
    if not membership.is_admin:
        keys = keys.filter(user=membership.user)
    # Keys in use first, newest first; revoked ones after them.
    return keys.order_by(F("revoked_at").desc(nulls_first=True), "-created", "-id")


def key_for(membership: Membership, key_id: UUID) -> ApiKey:
    return get_object_or_404(keys_visible_to(membership), uuid=key_id)
