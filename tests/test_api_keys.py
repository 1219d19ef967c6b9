"""API keys: their form, the page that makes and revokes them, the command, and what makes a
key stop working."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from api.keys import KEY_RE, new_key
from api.models import ApiKey
from tests.api_client import assert_error, call, csrf_token, make_key

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_a_key_has_the_documented_form_and_only_its_hash_is_kept(team, alice):
    raw, prefix, digest = new_key()
    match = KEY_RE.match(raw)
    assert match and match.group(1) == prefix and len(match.group(2)) >= 43  # 256 bits
    assert raw.startswith(f"tdm_{prefix}_")
    assert digest == hashlib.sha256(raw.encode()).hexdigest()
    assert len({new_key()[0] for _ in range(50)}) == 50

    raw = make_key(team, alice)
    key = ApiKey.objects.get()
    assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw.split("_")[1] == key.prefix
    stored = [str(getattr(key, f.attname)) for f in ApiKey._meta.fields]
    assert not any(raw in value for value in stored)


def test_a_member_makes_a_key_and_sees_it_once(team, bob):
    client = signed_in(bob)
    page = client.get("/t/acme/")
    assert 'href="/t/acme/api-keys/"' in page.content.decode()  # in the team's nav
    token = csrf_token(client, "/t/acme/api-keys/")
    response = client.post(
        "/t/acme/api-keys/",
        {"csrfmiddlewaretoken": token, "name": "CI bot", "scope": "write", "expires_in": "30"},
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    raw = re.search(r'value="(tdm_[^"]+)" data-testid="new-key-value"', response.text).group(1)
    key = ApiKey.objects.get(user=bob)
    assert (key.name, key.scope) == ("CI bot", "write")
    assert timedelta(days=29) < key.expires - timezone.now() <= timedelta(days=30)
    # The key works, and the page never shows it again.
    assert call(Client(), "GET", "me", key=raw).status_code == 200
    listing = client.get("/t/acme/api-keys/").content.decode()
    assert raw not in listing
    assert f"tdm_{key.prefix}…" in listing and "CI bot" in listing and "Read and write" in listing


def test_a_key_without_expiry_is_read_only_by_default(team, bob):
    client = signed_in(bob)
    token = csrf_token(client, "/t/acme/api-keys/")
    client.post("/t/acme/api-keys/", {"csrfmiddlewaretoken": token, "scope": "read"})
    key = ApiKey.objects.get()
    assert key.scope == "read" and key.expires is None and key.name == ""


def test_members_see_their_own_keys_and_admins_all(team, alice, bob):
    make_key(team, alice, name="alice-key")
    make_key(team, bob, name="bob-key")
    bob_page = signed_in(bob).get("/t/acme/api-keys/").content.decode()
    assert "bob-key" in bob_page and "alice-key" not in bob_page
    alice_page = signed_in(alice).get("/t/acme/api-keys/").content.decode()
    assert "bob-key" in alice_page and "alice-key" in alice_page
    assert "bob@example.com" in alice_page  # the owner column


def revoke(client: Client, key: ApiKey, *, token_from: str = "/t/acme/api-keys/"):
    token = csrf_token(client, token_from)
    return client.post(
        "/t/acme/api-keys/revoke/", {"csrfmiddlewaretoken": token, "key": str(key.uuid)}
    )


def test_revoking_takes_effect_at_once(team, alice, bob):
    raw = make_key(team, bob)
    key = ApiKey.objects.get()
    assert call(Client(), "GET", "me", key=raw).status_code == 200
    response = revoke(signed_in(bob), key)
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert_error(call(Client(), "GET", "me", key=raw), 401, "invalid_key")
    assert "revoked" in signed_in(bob).get("/t/acme/api-keys/").content.decode()


def test_only_admins_revoke_someone_elses_key(team, alice, bob, charlie, other_team):
    make_key(team, alice)
    alices = ApiKey.objects.get(user=alice)
    assert revoke(signed_in(bob), alices).status_code == 404
    assert revoke(signed_in(charlie), alices, token_from="/t/other/").status_code == 404
    alices.refresh_from_db()
    assert alices.revoked_at is None
    bobs_raw = make_key(team, bob)
    bobs = ApiKey.objects.get(user=bob)
    assert revoke(signed_in(alice), bobs).status_code == 302
    assert_error(call(Client(), "GET", "me", key=bobs_raw), 401)


def test_revoke_needs_a_key(team, bob):
    client = signed_in(bob)
    token = csrf_token(client, "/t/acme/api-keys/")
    assert (
        client.post("/t/acme/api-keys/revoke/", {"csrfmiddlewaretoken": token}).status_code == 400
    )
    response = client.post("/t/acme/api-keys/revoke/", {"csrfmiddlewaretoken": token, "key": "x"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "header",
    [
        "Bearer tdm_abcdefgh_" + "x" * 43,  # well-formed, unknown
        "Bearer tdm_short",
        "Bearer ",
        "Basic YWxpY2U6c2VjcmV0",
        "tdm_abcdefgh_" + "x" * 43,
    ],
)
def test_a_bad_authorization_header_is_401(team, header):
    response = Client().get("/api/v1/me", headers={"Authorization": header})
    assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_expired_keys_and_keys_of_former_members_stop_working(team, alice, bob):
    from accounts.models import Membership
    from accounts.services import membership_remove

    expired = make_key(team, bob)
    ApiKey.objects.filter(user=bob).update(expires=timezone.now() - timedelta(seconds=1))
    assert_error(call(Client(), "GET", "me", key=expired), 401, "invalid_key")

    raw = make_key(team, bob, name="second")
    assert call(Client(), "GET", "me", key=raw).status_code == 200
    membership_remove(
        actor=Membership.objects.get(team=team, user=alice),
        target=Membership.objects.get(team=team, user=bob),
    )
    assert_error(call(Client(), "GET", "me", key=raw), 401, "invalid_key")


def test_a_deactivated_persons_key_stops_working(team, bob):
    raw = make_key(team, bob)
    bob.is_active = False
    bob.save()
    assert_error(call(Client(), "GET", "me", key=raw), 401, "invalid_key")


def test_last_used_is_written_at_most_once_a_minute(team, bob):
    raw = make_key(team, bob)
    key = ApiKey.objects.get()
    assert key.last_used_at is None
    call(Client(), "GET", "me", key=raw)
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    for _ in range(3):
        call(Client(), "GET", "me", key=raw)
    key.refresh_from_db()
    assert key.last_used_at == first
    # A minute later, the next request notes it again.
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=first - timedelta(seconds=61))
    call(Client(), "GET", "me", key=raw)
    key.refresh_from_db()
    assert key.last_used_at > first


def test_the_key_page_is_for_members_only(team, charlie, other_team):
    assert signed_in(charlie).get("/t/acme/api-keys/").status_code == 404
    assert Client().get("/t/acme/api-keys/").status_code == 302


# --- The command ---------------------------------------------------------------------------


def test_createapikey_prints_a_working_key_on_its_last_line(team, bob):
    out = StringIO()
    call_command(
        "createapikey", "--team", "acme", "--user", "BOB@example.com", "--name", "ci",
        "--scope", "write", "--expires-days", "7", stdout=out,
    )  # fmt: skip
    raw = out.getvalue().strip().splitlines()[-1]
    assert KEY_RE.match(raw)
    key = ApiKey.objects.get()
    assert (key.user, key.team, key.name, key.scope) == (bob, team, "ci", "write")
    assert timedelta(days=6) < key.expires - timezone.now() <= timedelta(days=7)
    assert call(Client(), "GET", "me", key=raw).json()["key"]["scope"] == "write"


def test_createapikey_defaults_to_a_read_key_that_never_expires(team, bob):
    out = StringIO()
    call_command("createapikey", "--team", "acme", "--user", "bob@example.com", stdout=out)
    key = ApiKey.objects.get()
    assert key.scope == "read" and key.expires is None
    assert out.getvalue().strip().splitlines()[-1].startswith(f"tdm_{key.prefix}_")


@pytest.mark.parametrize(
    ("team_slug", "email", "message"),
    [
        ("nope", "bob@example.com", "No team with the slug nope"),
        ("acme", "nobody@example.com", "No user with the email nobody@example.com"),
        ("acme", "charlie@example.com", "charlie@example.com is not a member of acme"),
    ],
)
def test_createapikey_explains_what_is_wrong(team, charlie, team_slug, email, message):
    with pytest.raises(CommandError, match=message):
        call_command("createapikey", "--team", team_slug, "--user", email, stdout=StringIO())
    assert not ApiKey.objects.exists()


def test_a_found_key_comes_with_its_team_and_owner_as_the_orm_loads_them(
    team, bob, django_assert_num_queries
):
    """find_usable writes its query out (api/keys.py, _Lookup): what it hands back must be
    what the ORM would have, field for field, and key.team / key.user must need no query."""
    from accounts.models import Membership
    from api.keys import find_usable

    raw = make_key(team, bob)
    ApiKey.objects.filter(user=bob).update(
        expires=timezone.now() + timedelta(days=1), last_used_at=timezone.now()
    )
    with django_assert_num_queries(1):
        key, role = find_usable(raw)
        team_of, owner = key.team, key.user
    assert role == Membership.objects.get(team=team, user=bob).role
    expected = ApiKey.objects.select_related("team", "user").get(pk=key.pk)
    for found, orm in ((key, expected), (team_of, expected.team), (owner, expected.user)):
        assert type(found) is type(orm) and not found._state.adding
        for field in orm._meta.concrete_fields:
            assert getattr(found, field.attname) == getattr(orm, field.attname), field.name
            assert type(getattr(found, field.attname)) is type(getattr(orm, field.attname))
