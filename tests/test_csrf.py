"""Every state-changing request needs the CSRF token; signing out is POST-only."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.conftest import PASSWORD
from tests.urlwalk import classify, make_world

pytestmark = pytest.mark.django_db


def csrf_client(user=None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def token_from(client: Client, page: str) -> str:
    response = client.get(page)
    assert response.status_code == 200, (page, response.status_code)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.content.decode())
    assert match, f"no CSRF token on {page}"
    return match.group(1)


def is_signed_in(client: Client) -> bool:
    return client.get("/t/acme/").status_code == 200


def test_it_rejects_team_posts_without_token(alice, bob, team, no_runs):
    from assistant.models import Conversation

    team_routes, _, problems = classify()
    assert not problems and team_routes
    world = make_world(team=team, owner=alice, member=bob)
    client = csrf_client(alice)
    # The victim's browser has the CSRF cookie; the forged request lacks only the token.
    token_from(client, "/t/acme/")
    assert client.cookies.get("csrftoken")
    refused = []
    for route in team_routes:
        response = client.post(route.url(world), {"title": "x", "content": "x", "role": "admin"})
        if response.status_code != 403:
            refused.append(f"POST {route.url(world)}: {response.status_code}, not 403")
    assert not refused, "\n".join(refused)
    # Nothing happened: the conversation and its run are as they were.
    assert Conversation.objects.get(uuid=world["conversation_id"]).title == "Secret plans"
    world["run"].refresh_from_db()
    assert world["run"].status == "queued"
    assert team.memberships.count() == 2
    assert world["conversation"].messages.count() == 1
    assert team.conversations.count() == 1


def test_it_accepts_team_posts_with_token(alice, team, conversation, no_runs):
    """Control: the token from the page is enough (so the 403s above are about the token)."""
    client = csrf_client(alice)
    token = token_from(client, "/t/acme/")
    url = f"/t/acme/c/{conversation.uuid}/messages/"
    response = client.post(url, {"content": "hello", "csrfmiddlewaretoken": token})
    assert response.status_code == 201
    # htmx sends the token in a header instead (base.html's hx-headers).
    response = client.post(url, {"content": "again"}, headers={"X-CSRFToken": token})
    assert response.status_code == 201


@pytest.mark.parametrize(
    "url", ["/teams/new/", "/accounts/email/", "/accounts/password/change/", "/accounts/logout/"]
)
def test_it_rejects_account_posts_without_token(alice, team, url):
    client = csrf_client(alice)
    token_from(client, "/t/acme/")
    response = client.post(url, {"name": "New team", "email": "x@example.com"})
    assert response.status_code == 403


@pytest.mark.parametrize("url", ["/accounts/login/", "/accounts/signup/"])
def test_it_rejects_anonymous_posts_without_token(alice, url):
    data = {"login": alice.email, "password": PASSWORD}
    data |= {"email": "new@example.com", "password1": PASSWORD, "password2": PASSWORD}
    client = csrf_client()
    token_from(client, url)
    assert client.post(url, data).status_code == 403


def test_it_rejects_invitation_accept_without_token(alice, charlie, team):
    from accounts.services import invitation_create

    new = invitation_create(team=team, created_by=alice)
    client = csrf_client(charlie)
    token_from(client, new.path)
    response = client.post(new.path)
    assert response.status_code == 403
    assert not team.memberships.filter(user=charlie).exists()


def test_it_signs_out_on_post_only(alice, team):
    client = csrf_client(alice)
    # GET shows a confirmation page and changes nothing.
    assert client.get("/accounts/logout/").status_code == 200
    assert is_signed_in(client)
    # POST without the token: refused.
    assert client.post("/accounts/logout/").status_code == 403
    assert is_signed_in(client)
    # POST with the token: signed out.
    token = token_from(client, "/t/acme/")
    response = client.post("/accounts/logout/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert not is_signed_in(client)
