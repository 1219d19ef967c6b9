"""Roles change only through an owner's hand, and a team always keeps an owner: accepting an
invitation never touches an existing membership, invitations to a member's verified
addresses are refused, and no path (Members page, admin, shell, deleting a person) removes or
demotes the last owner."""

from __future__ import annotations

import pytest
from allauth.account.models import EmailAddress
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import Client

from accounts.models import Invitation, Membership, Role, Team
from accounts.services import (
    TeamError,
    accept_invitations_for_verified_email,
    invitation_create,
    membership_remove,
    membership_set_role,
)
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def role_of(user, team) -> str | None:
    membership = Membership.objects.filter(team=team, user=user).first()
    return membership.role if membership else None


def open_invitation(team, inviter, email: str, role: str) -> Invitation:
    """An invitation as one made before a member had this address (written directly)."""
    _, token_hash = Invitation.new_token()
    return Invitation.objects.create(
        team=team, email=email, role=role, token_hash=token_hash, created_by=inviter
    )


def sign_in(user) -> Client:
    client = Client()
    response = client.post("/accounts/login/", {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content.decode()[:500]
    return client


# --- Accepting an invitation never changes a membership ----------------------------------------


def test_signing_in_with_an_open_invitation_does_not_demote_the_owner(alice, bob, team):
    open_invitation(team, bob, "alice@example.com", Role.MEMBER)
    sign_in(alice)
    assert role_of(alice, team) == Role.OWNER
    # Used up, so it can't come back later.
    assert not Invitation.objects.filter(accepted__isnull=True).exists()


def test_an_invitation_to_a_second_verified_address_does_not_promote(alice, bob, team):
    EmailAddress.objects.create(user=bob, email="bob@work.example", verified=True)
    open_invitation(team, alice, "bob@work.example", Role.ADMIN)
    assert accept_invitations_for_verified_email(user=bob, email="bob@work.example") == []
    assert role_of(bob, team) == Role.MEMBER


def test_a_newcomers_invitation_still_joins(alice, team, charlie):
    open_invitation(team, alice, "charlie@example.com", Role.ADMIN)
    sign_in(charlie)
    assert role_of(charlie, team) == Role.ADMIN


# --- Invitations to a member's addresses are refused --------------------------------------------


def test_inviting_any_verified_address_of_a_member_is_refused(alice, bob, team):
    EmailAddress.objects.create(user=bob, email="bob@work.example", verified=True)
    for email in ("bob@example.com", "BOB@work.example"):
        with pytest.raises(TeamError, match="is already a member"):
            invitation_create(team=team, created_by=alice, email=email, role=Role.ADMIN)
    client = Client()
    client.force_login(alice)
    response = client.post("/t/acme/members/", {"email": "bob@work.example", "role": "admin"})
    assert "bob@work.example is already a member." in response.content.decode()
    assert not Invitation.objects.exists()


def test_an_unverified_address_of_a_member_can_be_invited(alice, bob, team):
    # Bob may have typed someone else's address; it is not his until he confirms it.
    EmailAddress.objects.create(user=bob, email="maybe@example.com", verified=False)
    invitation_create(team=team, created_by=alice, email="maybe@example.com")


# --- A team keeps an owner -----------------------------------------------------------------------


def owner(team):
    return Membership.objects.get(team=team, role=Role.OWNER)


def test_the_last_owner_cannot_be_demoted_or_removed_by_the_services(alice, bob, team):
    with pytest.raises(TeamError, match="at least one owner"):
        membership_set_role(actor=owner(team), target=owner(team), role=Role.MEMBER)
    with pytest.raises(TeamError, match="at least one owner"):
        membership_remove(actor=owner(team), target=owner(team))
    assert role_of(alice, team) == Role.OWNER


def test_or_from_the_shell(alice, bob, team):
    # (Each in a savepoint: a deletion refused mid-way spoils the transaction it runs in.)
    with pytest.raises(TeamError), transaction.atomic():
        owner(team).delete()
    with pytest.raises(TeamError), transaction.atomic():
        Membership.objects.filter(team=team).delete()
    membership = owner(team)
    membership.role = Role.ADMIN
    with pytest.raises(TeamError), transaction.atomic():
        membership.save()
    with pytest.raises(TeamError), transaction.atomic():
        alice.delete()
    assert role_of(alice, team) == Role.OWNER


def test_with_a_second_owner_either_may_go(alice, bob, team):
    membership_set_role(actor=owner(team), target=team.memberships.get(user=bob), role="owner")
    membership_remove(actor=team.memberships.get(user=bob), target=team.memberships.get(user=alice))
    assert role_of(bob, team) == Role.OWNER and role_of(alice, team) is None


def test_deleting_the_team_takes_its_owner_along(alice, team):
    team.delete()
    assert not Membership.objects.filter(user=alice).exists()


def test_addmember_changes_roles_but_keeps_an_owner(alice, bob, team):
    call_command("addmember", "acme", "bob@example.com", "--role", "admin")
    assert role_of(bob, team) == Role.ADMIN
    with pytest.raises(CommandError, match="at least one owner"):
        call_command("addmember", "acme", "alice@example.com", "--role", "member")
    assert role_of(alice, team) == Role.OWNER


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser(email="root@example.com", password="x")


def test_the_admin_refuses_to_delete_a_teams_only_owner(staff, alice, bob, team):
    client = Client()
    client.force_login(staff)
    page = client.get(f"/admin/accounts/user/{alice.pk}/delete/")
    assert page.status_code == 200
    assert "Team acme: its only owner" in page.content.decode()
    client.post(f"/admin/accounts/user/{alice.pk}/delete/", {"post": "yes"})
    assert role_of(alice, team) == Role.OWNER
    # Bob is no owner: he can go.
    client.post(f"/admin/accounts/user/{bob.pk}/delete/", {"post": "yes"})
    assert role_of(bob, team) is None


def test_the_admin_team_page_keeps_an_owner(staff, alice, bob, team):
    client = Client()
    client.force_login(staff)
    memberships = list(team.memberships.order_by("pk"))
    data = {
        "slug": "acme",
        "name": "Acme",
        "memberships-TOTAL_FORMS": str(len(memberships)),
        "memberships-INITIAL_FORMS": str(len(memberships)),
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    for index, membership in enumerate(memberships):
        data |= {
            f"memberships-{index}-id": str(membership.pk),
            f"memberships-{index}-team": str(team.pk),
            f"memberships-{index}-user": str(membership.user_id),
            f"memberships-{index}-role": membership.role,
            f"memberships-{index}-created_0": "2026-01-01",
            f"memberships-{index}-created_1": "00:00:00",
        }
        if membership.role == Role.OWNER:
            data[f"memberships-{index}-DELETE"] = "on"
    response = client.post(f"/admin/accounts/team/{team.pk}/change/", data)
    assert response.status_code == 200
    assert "A team needs at least one owner." in response.content.decode()
    assert role_of(alice, team) == Role.OWNER
    assert Team.objects.filter(pk=team.pk).exists()
