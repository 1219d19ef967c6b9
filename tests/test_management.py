"""The operator's commands: createuser, createteam, addmember."""

from __future__ import annotations

from io import StringIO

import pytest
from allauth.account.models import EmailAddress
from django.core.management import CommandError, call_command

from accounts.models import Membership, Role, Team, User

pytestmark = pytest.mark.django_db


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


# --- createuser --------------------------------------------------------------------------------


def test_it_creates_a_user_with_a_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEW_PASSWORD", "a long and secret passphrase")
    out = run("createuser", " Dana@Example.COM ", "--password-env", "NEW_PASSWORD")
    assert out.strip() == "Created dana@example.com."
    user = User.objects.get()
    assert user.email == "dana@example.com"
    assert user.check_password("a long and secret passphrase")
    assert not user.is_staff and not user.is_superuser
    # Can sign in by email at once: the address is allauth's verified primary one.
    address = EmailAddress.objects.get(user=user)
    assert (address.email, address.primary, address.verified) == ("dana@example.com", True, True)


def test_it_creates_staff(monkeypatch):
    monkeypatch.setenv("NEW_PASSWORD", "a long and secret passphrase")
    out = run("createuser", "ops@example.com", "--password-env", "NEW_PASSWORD", "--staff")
    assert "(staff)" in out
    user = User.objects.get()
    # Staff, not a superuser: the staff dashboard, and in the Django admin only what is granted.
    assert user.is_staff and not user.is_superuser


def test_it_creates_a_superuser_only_when_asked(monkeypatch):
    monkeypatch.setenv("NEW_PASSWORD", "a long and secret passphrase")
    out = run("createuser", "root@example.com", "--password-env", "NEW_PASSWORD", "--superuser")
    assert "(superuser)" in out
    user = User.objects.get()
    assert user.is_staff and user.is_superuser


def test_it_creates_a_user_without_a_password():
    run("createuser", "oauth@example.com")
    assert not User.objects.get().has_usable_password()


def test_it_refuses_an_empty_password_variable(monkeypatch):
    monkeypatch.setenv("EMPTY_PASSWORD", "")
    monkeypatch.delenv("UNSET_PASSWORD", raising=False)
    for var in ("EMPTY_PASSWORD", "UNSET_PASSWORD"):
        with pytest.raises(CommandError, match=f"The environment variable {var} is empty or unset"):
            run("createuser", "dana@example.com", "--password-env", var)
    assert not User.objects.exists()


def test_it_refuses_a_duplicate_user(alice):
    with pytest.raises(CommandError, match="A user with the email alice@example.com already"):
        run("createuser", "ALICE@example.com")
    assert User.objects.count() == 1


# --- createteam --------------------------------------------------------------------------------


def test_it_creates_a_team(alice):
    out = run("createteam", "rockets", "--owner", "Alice@Example.com", "--name", "Rocket Lab")
    assert out.strip() == "Created team rockets owned by alice@example.com."
    team = Team.objects.get(slug="rockets")
    assert team.name == "Rocket Lab"
    assert Membership.objects.get(team=team).user == alice
    assert Membership.objects.get(team=team).role == Role.OWNER


def test_it_names_a_team_after_its_slug_by_default(alice):
    run("createteam", "rockets", "--owner", alice.email)
    assert Team.objects.get(slug="rockets").name == "rockets"


def test_it_refuses_an_unknown_owner():
    with pytest.raises(CommandError, match="No user with the email nobody@example.com"):
        run("createteam", "rockets", "--owner", "nobody@example.com")
    assert not Team.objects.exists()


def test_it_requires_an_owner():
    with pytest.raises(CommandError, match="--owner"):
        run("createteam", "rockets")


def test_it_refuses_a_taken_slug(alice, team):
    with pytest.raises(CommandError, match="The short name 'acme' is taken."):
        run("createteam", "acme", "--owner", alice.email)
    assert Team.objects.count() == 1


@pytest.mark.parametrize("slug", ["Bad Slug", "admin", "x-", "a" * 51])
def test_it_refuses_a_bad_slug(alice, slug):
    with pytest.raises(CommandError, match="lower-case letters, digits and dashes"):
        run("createteam", slug, "--owner", alice.email)
    assert not Team.objects.exists()


# --- addmember ---------------------------------------------------------------------------------


def test_it_adds_a_member(charlie, team):
    out = run("addmember", "acme", "CHARLIE@example.com")
    assert out.strip() == "charlie@example.com is now member of acme."
    assert Membership.objects.get(team=team, user=charlie).role == Role.MEMBER


def test_it_adds_with_a_role_and_changes_it(charlie, team):
    run("addmember", "acme", charlie.email, "--role", "admin")
    assert Membership.objects.get(team=team, user=charlie).role == Role.ADMIN
    run("addmember", "acme", charlie.email, "--role", "member")
    assert Membership.objects.get(team=team, user=charlie).role == Role.MEMBER
    assert Membership.objects.filter(team=team, user=charlie).count() == 1


def test_it_refuses_an_unknown_team(charlie):
    with pytest.raises(CommandError, match="No team with the slug nope."):
        run("addmember", "nope", charlie.email)


def test_it_refuses_an_unknown_user(team):
    with pytest.raises(CommandError, match="No user with the email nobody@example.com"):
        run("addmember", "acme", "nobody@example.com")


def test_it_refuses_an_unknown_role(charlie, team):
    with pytest.raises(CommandError, match="invalid choice: 'boss'"):
        run("addmember", "acme", charlie.email, "--role", "boss")
    assert not Membership.objects.filter(user=charlie).exists()
