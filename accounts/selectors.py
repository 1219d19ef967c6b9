"""Permission-scoped reads. Every lookup of a team-owned object starts here: outsiders get 404."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from .models import Invitation, Membership, Team, User


def membership_for(user: User | AnonymousUser, slug: str) -> Membership:
    """The user's membership of the team ``slug``; 404 when there is none (or no such team)."""
    if not user.is_authenticated:
        raise Http404("No such team")
    try:
        return Membership.objects.select_related("team").get(team__slug=slug, user=user)
    except Membership.DoesNotExist:
        raise Http404("No such team")


def admin_membership_for(user: User | AnonymousUser, slug: str) -> Membership:
    """As membership_for, but the user must be an owner or admin (404 otherwise, so a member
    learns nothing about admin-only pages beyond what they can already see)."""
    membership = membership_for(user, slug)
    if not membership.is_admin:
        raise Http404("No such page")
    return membership


def teams_of(user: User) -> QuerySet[Team]:
    return Team.objects.filter(memberships__user=user).order_by("name")


def members_of(team: Team) -> QuerySet[Membership]:
    return team.memberships.select_related("user").order_by("created")


def open_invitations_of(team: Team) -> QuerySet[Invitation]:
    from django.utils import timezone

    return team.invitations.filter(
        accepted__isnull=True, revoked__isnull=True, expires__gt=timezone.now()
    ).order_by("-created")
