"""Teams: creating one, inviting people by link and by email, switching teams, roles."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Invitation, Membership, Role, Team
from accounts.services import invitation_create, membership_add
from tests.conftest import PASSWORD, _user

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def role_of(user, team) -> str | None:
    membership = Membership.objects.filter(user=user, team=team).first()
    return membership.role if membership else None


def invite_link(response) -> str:
    html = response.content.decode()
    match = re.search(r'value="https?://[^"/]+(/invite/[^"]+/)" data-testid="invite-link"', html)
    assert match, "no invitation link on the page"
    return match.group(1)


@pytest.fixture
def dave(django_user_model):
    return _user(django_user_model, "dave@example.com")


@pytest.fixture
def admin_dave(dave, team):
    membership_add(team=team, user=dave, role=Role.ADMIN)
    return dave


# --- Creating a team ---------------------------------------------------------------------------


def test_it_creates_a_team_with_its_creator_as_owner(charlie):
    response = signed_in(charlie).post("/teams/new/", {"name": "Rocket Lab", "slug": ""})
    team = Team.objects.get(name="Rocket Lab")
    assert team.slug == "rocket-lab"  # derived from the name
    assert response.status_code == 302 and response["Location"] == "/t/rocket-lab/"
    assert role_of(charlie, team) == Role.OWNER


def test_it_lowercases_a_chosen_slug(charlie):
    signed_in(charlie).post("/teams/new/", {"name": "Rockets", "slug": "Rocket-2"})
    assert Team.objects.get(name="Rockets").slug == "rocket-2"


def test_it_derives_a_free_slug_when_the_name_is_taken(charlie, team):
    signed_in(charlie).post("/teams/new/", {"name": "Acme", "slug": ""})
    assert Team.objects.filter(name="Acme").count() == 2
    assert Team.objects.filter(slug="acme-2").exists()


@pytest.mark.parametrize(
    "slug", ["bad slug", "-acme", "acme-", "ac_me", "acmé", "a" * 51, "new", "admin", "invite"]
)
def test_it_rejects_a_bad_or_reserved_slug(charlie, slug):
    response = signed_in(charlie).post("/teams/new/", {"name": "Rockets", "slug": slug})
    assert response.status_code == 200
    assert 'role="alert"' in response.content.decode()
    assert not Team.objects.filter(name="Rockets").exists()


def test_it_explains_a_slug_that_is_too_long(charlie):
    response = signed_in(charlie).post("/teams/new/", {"name": "Rockets", "slug": "a" * 51})
    assert "Short name: Ensure this value has at most 50 characters" in response.content.decode()


def test_it_rejects_a_taken_slug(charlie, team):
    response = signed_in(charlie).post("/teams/new/", {"name": "Rockets", "slug": "acme"})
    assert "The short name &#x27;acme&#x27; is taken." in response.content.decode()
    assert not Team.objects.filter(name="Rockets").exists()
    assert role_of(charlie, team) is None


# --- Invitations by link -----------------------------------------------------------------------


def test_it_invites_by_a_single_use_link(alice, charlie, dave, team):
    response = signed_in(alice).post("/t/acme/members/", {"email": "", "role": "member"})
    assert response.status_code == 200
    link = invite_link(response)
    invitation = Invitation.objects.get(team=team)
    token = link.split("/")[2]
    assert invitation.token_hash == Invitation.hash(token) != token  # only the hash is stored

    joining = signed_in(charlie)
    assert "Join Acme" in joining.get(link).content.decode()
    response = joining.post(link)
    assert response.status_code == 302 and response["Location"] == "/t/acme/"
    assert role_of(charlie, team) == Role.MEMBER

    # A second person: a clear error, no membership.
    response = signed_in(dave).post(link)
    assert response.status_code == 410
    assert "This invitation link has already been used." in response.content.decode()
    assert role_of(dave, team) is None


def test_it_refuses_an_expired_link(alice, charlie, team):
    new = invitation_create(team=team, created_by=alice)
    Invitation.objects.filter(pk=new.invitation.pk).update(
        expires=timezone.now() - timedelta(minutes=1)
    )
    client = signed_in(charlie)
    for response in (client.get(new.path), client.post(new.path), Client().get(new.path)):
        assert response.status_code == 410
        assert "This invitation link has expired." in response.content.decode()
    assert role_of(charlie, team) is None


def test_it_refuses_a_revoked_link(alice, charlie, team):
    new = invitation_create(team=team, created_by=alice)
    response = signed_in(alice).post(f"/t/acme/invitations/{new.invitation.uuid}/revoke/")
    assert response.status_code == 302
    response = signed_in(charlie).post(new.path)
    assert response.status_code == 410
    assert "This invitation link was withdrawn." in response.content.decode()
    assert role_of(charlie, team) is None


def test_it_refuses_an_unknown_link(charlie):
    response = signed_in(charlie).get("/invite/not-a-real-token/")
    assert response.status_code == 404
    assert "This invitation link is not valid." in response.content.decode()


def test_it_lets_an_anonymous_visitor_sign_up_into_the_team(alice, team):
    new = invitation_create(team=team, created_by=alice, role=Role.ADMIN)
    visitor = Client()
    page = visitor.get(new.path)
    assert page.status_code == 200 and "Join Acme" in page.content.decode()
    # The real allauth sign-up form.
    assert visitor.get("/accounts/signup/").status_code == 200
    response = visitor.post(
        "/accounts/signup/",
        {"email": "newbie@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert response["Location"] == "/t/acme/"
    newbie = Membership.objects.get(team=team, user__email="newbie@example.com")
    assert newbie.role == Role.ADMIN
    assert visitor.get("/t/acme/").status_code == 200
    new.invitation.refresh_from_db()
    assert new.invitation.accepted_by == newbie.user


# --- Invitations by email ----------------------------------------------------------------------


def test_it_invites_by_email(alice, team, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = signed_in(alice).post(
            "/t/acme/members/", {"email": "X@Example.com", "role": "member"}
        )
    assert response.status_code == 200
    assert "Invitation sent to x@example.com." in response.content.decode()
    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    assert mail.to == ["x@example.com"]
    assert "Acme" in mail.subject
    assert re.search(r"http://\S+/invite/\S+/", mail.body)


def test_it_keeps_an_email_invitation_for_its_address(
    alice, team, mailoutbox, django_capture_on_commit_callbacks, django_user_model
):
    with django_capture_on_commit_callbacks(execute=True):
        invitation_create(team=team, created_by=alice, email="x@example.com")
    path = re.search(r"https?://[^/\s]+(/invite/\S+/)", mailoutbox[0].body).group(1)
    y = _user(django_user_model, "y@example.com")
    response = signed_in(y).post(path)
    assert response.status_code == 200
    assert "This invitation is for x@example.com." in response.content.decode()
    assert role_of(y, team) is None
    # The addressee can still use it.
    x = _user(django_user_model, "x@example.com")
    assert signed_in(x).post(path).status_code == 302
    assert role_of(x, team) == Role.MEMBER


def test_it_refuses_to_invite_a_member_by_email(alice, bob, team, mailoutbox):
    response = signed_in(alice).post("/t/acme/members/", {"email": bob.email, "role": "member"})
    assert "bob@example.com is already a member." in response.content.decode()
    assert not Invitation.objects.exists() and not mailoutbox


# --- Several teams -------------------------------------------------------------------------------


def test_it_switches_between_teams(bob, team, other_team):
    membership_add(team=other_team, user=bob)
    client = signed_in(bob)
    assert client.get("/t/other/").status_code == 200
    assert client.get("/").headers["Location"] == "/t/other/"
    assert client.get("/t/acme/").status_code == 200
    assert client.get("/").headers["Location"] == "/t/acme/"
    html = client.get("/t/acme/").content.decode()
    assert 'href="/t/other/"' in html  # the team switcher


def test_it_sends_a_user_without_team_to_create_one(charlie):
    assert signed_in(charlie).get("/").headers["Location"] == "/teams/new/"


# --- Roles ---------------------------------------------------------------------------------------


def test_it_lets_only_owners_change_roles(alice, bob, admin_dave, team):
    url = f"/t/acme/members/{bob.uuid}/role/"
    response = signed_in(admin_dave).post(url, {"role": "admin"}, follow=True)
    assert "Only an owner can change roles." in response.content.decode()
    assert role_of(bob, team) == Role.MEMBER
    # Not even their own.
    signed_in(bob).post(f"/t/acme/members/{bob.uuid}/role/", {"role": "owner"})
    assert role_of(bob, team) == Role.MEMBER
    signed_in(alice).post(url, {"role": "admin"})
    assert role_of(bob, team) == Role.ADMIN


def test_it_refuses_an_unknown_role(alice, bob, team):
    response = signed_in(alice).post(
        f"/t/acme/members/{bob.uuid}/role/", {"role": "superuser"}, follow=True
    )
    assert "Unknown role." in response.content.decode()
    assert role_of(bob, team) == Role.MEMBER


def test_it_keeps_at_least_one_owner(alice, bob, team):
    client = signed_in(alice)
    response = client.post(f"/t/acme/members/{alice.uuid}/role/", {"role": "member"}, follow=True)
    assert "A team needs at least one owner." in response.content.decode()
    assert role_of(alice, team) == Role.OWNER
    response = client.post(f"/t/acme/members/{alice.uuid}/remove/", follow=True)
    assert "A team needs at least one owner." in response.content.decode()
    assert role_of(alice, team) == Role.OWNER
    # With a second owner, the first may step down.
    client.post(f"/t/acme/members/{bob.uuid}/role/", {"role": "owner"})
    client.post(f"/t/acme/members/{alice.uuid}/role/", {"role": "member"})
    assert (role_of(alice, team), role_of(bob, team)) == (Role.MEMBER, Role.OWNER)


def test_it_lets_admins_invite_and_not_members(bob, admin_dave, team):
    response = signed_in(admin_dave).post("/t/acme/members/", {"email": "", "role": "member"})
    assert response.status_code == 200 and invite_link(response)
    response = signed_in(bob).post("/t/acme/members/", {"email": "", "role": "member"})
    assert response.status_code == 404  # an admin action: 404 to members, as everywhere
    assert Invitation.objects.count() == 1
    # Members see no invitation form and no open invitations.
    html = signed_in(bob).get("/t/acme/members/").content.decode()
    assert "Invite a teammate" not in html and "Open invitations" not in html


def test_it_refuses_invitations_as_owner(alice, team):
    response = signed_in(alice).post("/t/acme/members/", {"email": "", "role": "owner"})
    assert response.status_code == 200
    assert not Invitation.objects.exists()


def test_it_lets_members_leave(bob, team):
    response = signed_in(bob).post(f"/t/acme/members/{bob.uuid}/remove/")
    assert response.status_code == 302 and response["Location"] == "/"
    assert role_of(bob, team) is None
    assert signed_in(bob).get("/t/acme/").status_code == 404


def test_it_lets_members_remove_nobody_else(alice, bob, admin_dave, team):
    response = signed_in(bob).post(f"/t/acme/members/{admin_dave.uuid}/remove/")
    assert response.status_code == 404
    assert role_of(admin_dave, team) == Role.ADMIN
    response = signed_in(bob).post(f"/t/acme/members/{admin_dave.uuid}/role/", {"role": "member"})
    assert response.status_code == 404
    assert role_of(admin_dave, team) == Role.ADMIN
    # An admin can't remove an owner; an admin can remove a member.
    signed_in(admin_dave).post(f"/t/acme/members/{alice.uuid}/remove/")
    assert role_of(alice, team) == Role.OWNER
    signed_in(admin_dave).post(f"/t/acme/members/{bob.uuid}/remove/")
    assert role_of(bob, team) is None
