"""Nobody outside a team learns anything about it: every team URL is 404 to an outsider,
a redirect to sign-in for an anonymous visitor, and admin-only pages are 404 to a member.

The URL patterns are walked, not listed by hand: a new URL the walker can't fill fails
``test_it_checks_every_url``, so nothing slips by unchecked (see tests/urlwalk.py)."""

from __future__ import annotations

import re
from contextlib import contextmanager

import pytest
from django.db import transaction
from django.test import Client

from tests.urlwalk import (
    ADMIN_ONLY,
    PUBLIC_PREFIXES,
    PUBLIC_ROUTES,
    STAFF_PREFIXES,
    classify,
    make_world,
    staff_routes,
)

pytestmark = pytest.mark.django_db

SECRETS = ("Secret plans", "The secret is 42")
METHODS = ("GET", "POST")


@pytest.fixture(autouse=True)
def repos_root(settings, tmp_path):
    settings.REPOS_ROOT = tmp_path / "repos"


@pytest.fixture(autouse=True)
def no_llm_call(monkeypatch):
    """The settings' Test connection button must not call a provider from these tests."""

    async def fake_check(config):
        return "ok"

    monkeypatch.setattr("assistant.llm.check_connection", fake_check)


def signed_in(user, page: str) -> tuple[Client, str]:
    """A client that enforces CSRF, signed in as ``user``, and a token from ``page``."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.get(page)
    assert response.status_code == 200, (page, response.status_code)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.content.decode())
    assert match, f"no CSRF token on {page}"
    return client, match.group(1)


def send(client: Client, method: str, url: str, token: str | None = None):
    if method == "GET":
        return client.get(url)
    return client.post(url, {"csrfmiddlewaretoken": token} if token else {})


@contextmanager
def rolled_back():
    """Each request gets fresh objects: a POST (delete, remove...) can't spoil the next one."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def method_not_allowed(response, method: str) -> bool:
    return response.status_code == 405 and method not in response.get("Allow", "")


def test_it_checks_every_url():
    team_routes, public, problems = classify()
    assert not problems, "URL patterns nobody checks:\n" + "\n".join(problems)
    names = {route.name for route in team_routes}
    # A walker that finds nothing proves nothing.
    assert {
        "conversation_list",
        "conversation_detail",
        "message_send",
        "run_detail",
        "run_cancel",
        "members",
        "invitation_revoke",
        "team_settings",
    } <= names
    assert names >= ADMIN_ONLY, "stale ADMIN_ONLY entries"
    # No stale allowlist entries either.
    for route in PUBLIC_ROUTES:
        assert route in public, f"allowlisted {route!r} is no URL pattern any more"
    for prefix in PUBLIC_PREFIXES:
        assert any(r.startswith(prefix) for r in public), f"no URL under {prefix!r}"


def test_it_rejects_outsider(alice, bob, charlie, team, other_team, no_runs):
    team_routes, _, problems = classify()
    assert not problems
    outsider, outsider_token = signed_in(charlie, "/t/other/")
    owner, owner_token = signed_in(alice, "/t/acme/")
    failures = []
    for route in team_routes:
        for method in METHODS:
            with rolled_back():
                world = make_world(team=team, owner=alice, member=bob)
                url = route.url(world)
                seen = send(outsider, method, url, outsider_token)
                # Control: the same URL works for the owner, so the 404 above is the access
                # rule at work, not a URL that points at nothing.
                control = send(owner, method, url, owner_token)
            body = seen.content.decode(errors="replace")
            if any(secret in body for secret in SECRETS):
                failures.append(f"{method} {url}: the outsider's page shows the team's data")
            if method_not_allowed(seen, method):
                # Refused for everyone before any lookup: tells nothing about the object.
                if not method_not_allowed(control, method):
                    failures.append(f"{method} {url}: 405 for the outsider only")
                continue
            if seen.status_code != 404:
                failures.append(f"{method} {url}: outsider got {seen.status_code}, not 404")
            if control.status_code in (403, 404) or control.status_code >= 500:
                failures.append(
                    f"{method} {url}: control failed, the owner got {control.status_code}"
                )
    assert not failures, "\n".join(failures)


def test_it_rejects_outsider_for_objects_that_do_not_exist(alice, charlie, other_team, no_runs):
    """Unknown ids and unknown teams answer exactly like someone else's: 404."""
    import uuid

    team_routes, _, _ = classify()
    outsider, token = signed_in(charlie, "/t/other/")
    world = {
        "slug": "no-such-team",
        "conversation_id": uuid.uuid4(),
        "run_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "invitation_id": uuid.uuid4(),
        "call_id": uuid.uuid4(),
    }
    for route in team_routes:
        for method in METHODS:
            response = send(outsider, method, route.url(world), token)
            assert response.status_code == 404 or method_not_allowed(response, method), (
                method,
                route.route,
                response.status_code,
            )


def test_it_redirects_anonymous_visitors_to_sign_in(alice, bob, team, no_runs):
    team_routes, _, _ = classify()
    world = make_world(team=team, owner=alice, member=bob)
    anonymous = Client()
    for route in team_routes:
        url = route.url(world)
        for method in METHODS:
            response = send(anonymous, method, url)
            assert response.status_code == 302, (method, url, response.status_code)
            assert response["Location"].startswith("/accounts/login/?next="), (method, url)
            assert not any(secret in response.content.decode() for secret in SECRETS)


def test_it_rejects_member_on_admin_pages(alice, bob, team, no_runs, django_user_model):
    from accounts.models import Role
    from accounts.services import membership_add
    from tests.conftest import _user

    team_routes, _, _ = classify()
    admin_routes = [route for route in team_routes if route.name in ADMIN_ONLY]
    assert len(admin_routes) == len(ADMIN_ONLY)
    dave = _user(django_user_model, "dave@example.com")
    membership_add(team=team, user=dave, role=Role.ADMIN)
    member, member_token = signed_in(bob, "/t/acme/")
    admin, admin_token = signed_in(dave, "/t/acme/")
    for route in admin_routes:
        for method in METHODS:
            with rolled_back():
                url = route.url(make_world(team=team, owner=alice, member=bob))
                seen = send(member, method, url, member_token)
                control = send(admin, method, url, admin_token)
            if method_not_allowed(seen, method):
                assert method_not_allowed(control, method)
                continue
            assert seen.status_code == 404, (method, url, seen.status_code)
            # An admin (not only the owner) may use them.
            assert control.status_code not in (403, 404), (method, url, control.status_code)


def test_it_hides_the_settings_link_from_members(alice, bob, team):
    member, _ = signed_in(bob, "/t/acme/")
    assert "/t/acme/settings/" not in member.get("/t/acme/").content.decode()
    owner, _ = signed_in(alice, "/t/acme/")
    assert "/t/acme/settings/" in owner.get("/t/acme/").content.decode()


def test_it_hides_staff_pages_from_everyone_else(alice, bob, charlie, team, django_user_model):
    """Site-wide pages: a team's owner is no one special there; only staff get in."""
    from tests.conftest import _user

    routes = staff_routes()
    assert {"staff_usage", "staff_usage_csv"} <= {route.name for route in routes}
    for prefix in STAFF_PREFIXES:
        assert any(route.route.startswith(prefix) for route in routes), prefix
    erin = _user(django_user_model, "erin@example.com")
    erin.is_staff = True
    erin.save(update_fields=["is_staff"])
    staff, staff_token = signed_in(erin, "/teams/new/")
    others = [signed_in(user, "/t/acme/") for user in (alice, bob)]
    others.append(signed_in(charlie, "/teams/new/"))
    for route in routes:
        url = "/" + route.route
        for method in METHODS:
            control = send(staff, method, url, staff_token)
            for client, token in others:
                seen = send(client, method, url, token)
                if method_not_allowed(seen, method):
                    assert method_not_allowed(control, method), (method, url)
                    continue
                assert seen.status_code == 404, (method, url, seen.status_code)
            assert control.status_code not in (403, 404) and control.status_code < 500, (
                method,
                url,
                control.status_code,
            )
            anonymous = send(Client(), method, url)
            assert anonymous.status_code == 302, (method, url, anonymous.status_code)
            assert anonymous["Location"].startswith("/accounts/login/?next="), (method, url)
