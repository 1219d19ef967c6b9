"""Nobody outside a team learns anything about it through the API: every /api/v1/ route is
walked (not listed by hand), filled with a team's real objects, and asked by an outsider's
session, an outsider's key and nobody at all — with the owner as the control."""

from __future__ import annotations

import re
import uuid
from contextlib import contextmanager

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, get_resolver

from tests.api_client import assert_error, call, csrf_token, make_key
from tests.urlwalk import make_world

pytestmark = pytest.mark.django_db

SECRETS = ("Secret plans", "The secret is 42")
METHODS = ("GET", "POST", "DELETE")
# Not about any team: the caller's own account, and the public description.
NOT_TEAM = {"api_me", "api_openapi", "api_docs"}
BODIES = {
    "api_messages": {"content": "hello"},
    "api_tool_call_decision": {"decision": "approve"},
    "api_conversations": {"title": "x"},
}
PARAMS = {"conversation_id", "run_id", "call_id", "job_id"}
# Routes about a team as a whole, asked with ?team=acme (the outsider names a team not theirs).
TEAM_LISTS = {"conversations", "approvals", "usage"}


@pytest.fixture(autouse=True)
def setup(settings, tmp_path):
    settings.REPOS_ROOT = tmp_path / "repos"
    settings.API_RATE_PER_MINUTE = 0
    settings.API_KEY_RATE_PER_MINUTE = 0


def api_routes() -> list[tuple[str, str]]:
    (resolver,) = [p for p in get_resolver().url_patterns if str(p.pattern) == "api/v1/"]
    return [
        (str(p.pattern), p.name)
        for p in resolver.url_patterns
        if isinstance(p, URLPattern) and p.name and p.name not in NOT_TEAM
    ]


def fill(route: str, world: dict) -> str:
    path = route
    for kind, name in re.findall(r"<(\w+):(\w+)>", route):
        assert name in PARAMS, f"{route}: teach this test about {name}"
        path = path.replace(f"<{kind}:{name}>", str(world[name]))
    if "<" not in route and route in TEAM_LISTS:
        path += "?team=acme"  # sessions name the team for lists
    return path


@contextmanager
def rolled_back():
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def is_405(response) -> bool:
    return response.status_code == 405


def test_it_walks_every_api_route():
    names = {name for _, name in api_routes()}
    assert {
        "api_conversations",
        "api_conversation",
        "api_messages",
        "api_conversation_events",
        "api_run",
        "api_run_cancel",
        "api_tool_call_decision",
    } <= names


def test_outsiders_get_404_from_every_route(alice, bob, charlie, team, other_team, no_runs):
    outsider_key = make_key(other_team, charlie)
    owner_key = make_key(team, alice)
    outsider = Client(enforce_csrf_checks=True)
    outsider.force_login(charlie)
    outsider_csrf = csrf_token(outsider, "/t/other/")
    owner = Client(enforce_csrf_checks=True)
    owner.force_login(alice)
    owner_csrf = csrf_token(owner, "/t/acme/")
    failures = []
    for route, name in api_routes():
        for method in METHODS:
            body = BODIES.get(name) if method == "POST" else None
            # Who asks, and how: (client, key, extra headers).
            requests = {
                "session": (outsider, None, {"X-CSRFToken": outsider_csrf}),
                "key": (Client(), outsider_key, {}),
                "anonymous": (Client(), None, {}),
                "owner session": (owner, None, {"X-CSRFToken": owner_csrf}),
                "owner key": (Client(), owner_key, {}),
            }
            if name == "api_conversation_events" and method == "GET":
                # An open stream: the stream tests cover the owner's side.
                del requests["owner session"], requests["owner key"]
            with rolled_back():
                world = make_world(team=team, owner=alice, member=bob)
                world["conversation_id"] = world["conversation"].uuid
                path = fill(route, world)
                answers = {}
                for who, (client, key, headers) in requests.items():
                    with rolled_back():  # each on the same objects, as they were
                        answers[who] = call(
                            client, method, path, key=key, body=body, headers=headers
                        )
            controls = [answers.pop(w) for w in ("owner session", "owner key") if w in answers]
            seen = answers
            for who, response in seen.items():
                text = response.content.decode(errors="replace")
                if any(secret in text for secret in SECRETS):
                    failures.append(f"{method} {path} ({who}): shows the team's data")
                expected = 401 if who == "anonymous" else 404
                if is_405(response):
                    if any(not is_405(c) for c in controls):
                        failures.append(f"{method} {path} ({who}): 405 for the outsider only")
                    continue
                if response.status_code != expected:
                    failures.append(f"{method} {path} ({who}): {response.status_code}")
                else:
                    assert_error(response, expected)
            for control in controls:
                if control.status_code in (401, 403, 404) or control.status_code >= 500:
                    failures.append(f"{method} {path}: control got {control.status_code}")
    assert not failures, "\n".join(failures)


def test_unknown_ids_answer_like_someone_elses(alice, team, no_runs):
    key = make_key(team, alice)
    world = {name: uuid.uuid4() for name in PARAMS}
    for route, _ in api_routes():
        if "<" not in route:
            continue
        for method in METHODS:
            response = call(Client(), method, fill(route, world), key=key, body={})
            assert response.status_code in (404, 405), (method, route, response.status_code)
            if response.status_code == 404:
                assert_error(response, 404, "not_found")


def test_a_session_can_narrow_lookups_to_one_team(alice, bob, team, charlie, other_team, no_runs):
    """?team= narrows object lookups: a conversation of acme asked for under a team the person
    is also in is 404."""
    from accounts.models import Role
    from accounts.services import membership_add

    membership_add(team=other_team, user=alice, role=Role.MEMBER)
    world = make_world(team=team, owner=alice, member=bob)
    client = Client()
    client.force_login(alice)
    path = f"conversations/{world['conversation'].uuid}"
    assert call(client, "GET", path).status_code == 200
    assert call(client, "GET", path + "?team=acme").status_code == 200
    assert_error(call(client, "GET", path + "?team=other"), 404)
