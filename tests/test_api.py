"""The /api/v1/ endpoints, in process: what each answers, to whom, and every error's shape."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client
from django.urls import URLPattern, get_resolver

from assistant.models import Conversation, Message, Run, RunStatus, ToolCall, ToolCallStatus
from assistant.services import message_send
from tests.api_client import assert_error, call, csrf_token, make_key
from usage.budgets import BudgetExceeded

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def repos_root(settings, tmp_path):
    settings.REPOS_ROOT = tmp_path / "repos"


@pytest.fixture(autouse=True)
def no_rate_limit(settings):
    # Rate limits have their own tests; these make more requests than a minute's worth.
    settings.API_RATE_PER_MINUTE = 0
    settings.API_KEY_RATE_PER_MINUTE = 0


@pytest.fixture
def key(team, alice):
    return make_key(team, alice, scope="write")


@pytest.fixture
def read_key(team, alice):
    return make_key(team, alice, scope="read", name="reader")


@pytest.fixture
def api():
    return Client(enforce_csrf_checks=True)


def awaiting_call(run: Run) -> ToolCall:
    Run.objects.filter(pk=run.pk).update(status=RunStatus.WAITING)
    return ToolCall.objects.create(
        run=run,
        step=1,
        index=0,
        call_id="call_1",
        name="run_command",
        arguments='{"command": "make"}',
        status=ToolCallStatus.AWAITING,
    )


# --- /me -----------------------------------------------------------------------------------------


def test_me_with_a_key_names_its_team(api, key, alice, team):
    body = call(api, "GET", "me", key=key).json()
    assert body["user"] == {"id": str(alice.uuid), "email": alice.email, "name": alice.name}
    assert body["team"]["slug"] == "acme" and body["team"]["role"] == "owner"
    assert body["teams"] == [body["team"]]
    assert body["key"]["scope"] == "write" and key.startswith(f"tdm_{body['key']['prefix']}_")


def test_me_with_a_session_lists_the_persons_teams(api, bob, team, other_team):
    api.force_login(bob)
    body = call(api, "GET", "me").json()
    assert body["user"]["email"] == "bob@example.com"
    assert body["team"] is None and body["key"] is None
    assert [(t["slug"], t["role"]) for t in body["teams"]] == [("acme", "member")]


def test_anonymous_requests_are_401(api, conversation):
    for method, path in [
        ("GET", "me"),
        ("GET", "conversations?team=acme"),
        ("POST", "conversations?team=acme"),
        ("GET", f"conversations/{conversation.uuid}"),
    ]:
        assert_error(call(api, method, path), 401, "unauthorized")


# --- Conversations -------------------------------------------------------------------------------


def test_a_session_names_the_team_for_lists(api, alice, team, conversation):
    api.force_login(alice)
    assert_error(call(api, "GET", "conversations"), 400, "team_required")
    body = call(api, "GET", "conversations?team=acme").json()
    assert [c["id"] for c in body["data"]] == [str(conversation.uuid)]
    assert_error(call(api, "GET", "conversations?team=other"), 404)  # exists, not hers
    assert_error(call(api, "GET", "conversations?team=no-such"), 404)
    assert_error(call(api, "GET", "conversations?team=%00"), 404)


def test_a_key_lists_its_own_teams_conversations(api, key, conversation, charlie, other_team):
    from assistant.services import conversation_create

    conversation_create(team=other_team, author=charlie, title="Not yours")
    body = call(api, "GET", "conversations", key=key).json()
    assert [c["title"] for c in body["data"]] == ["Refactor the parser"]
    assert body["next"] is None
    item = body["data"][0]
    assert item["team"] == "acme" and item["created_by"] == "alice" and item["repository"] is None
    assert call(api, "GET", "conversations?team=acme", key=key).status_code == 200
    assert_error(call(api, "GET", "conversations?team=other", key=key), 404)


def test_lists_page_by_cursor(api, key, team, alice):
    from assistant.services import conversation_create

    made = [conversation_create(team=team, author=alice, title=f"c{i}") for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        path = "conversations?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = call(api, "GET", path, key=key).json()
        seen += [c["id"] for c in body["data"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [str(c.uuid) for c in reversed(made)]  # most recently active first
    assert len(call(api, "GET", "conversations", key=key).json()["data"]) == 7


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=abc", "limit=-1", "limit=%C2%B2", "cursor=bogus", "cursor=%00"],
)
def test_bad_paging_parameters_are_400(api, key, query):
    response = call(api, "GET", f"conversations?{query}", key=key)
    assert_error(response, 400)


def test_a_search_narrows_the_list(api, key, team, alice, conversation):
    from assistant.services import conversation_create

    conversation_create(team=team, author=alice, title="Write the docs")
    body = call(api, "GET", "conversations?q=pars", key=key).json()
    assert [c["title"] for c in body["data"]] == ["Refactor the parser"]


def test_create_a_conversation(api, key, team):
    response = call(api, "POST", "conversations", key=key, body={"title": "  Plan  "})
    assert response.status_code == 201
    body = response.json()
    made = Conversation.objects.get(uuid=uuid.UUID(body["id"]))
    assert made.team == team and body["title"] == "Plan" and made.title_is_custom
    untitled = call(api, "POST", "conversations", key=key).json()
    assert untitled["title"] == "New conversation"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ("{", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_json"),
        ('"title"', 400, "invalid_json"),
        ("[" * 100_000, 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        ('{"title": 5}', 400, "invalid_field"),
        ('{"title": null}', 400, "invalid_field"),
        ('{"tilte": "typo"}', 400, "unknown_field"),
        (json.dumps({"title": "x" * 201}), 422, "invalid_field"),
        (json.dumps({"title": "a\x00b"}), 422, "invalid_field"),
        (json.dumps({"branch": "main"}), 422, "invalid_field"),
        (json.dumps({"repository": "no-such-repo"}), 422, "unknown_repository"),
    ],
)
def test_a_bad_conversation_body_is_refused(api, key, team, raw, status, code):
    assert_error(call(api, "POST", "conversations", key=key, raw=raw), status, code)
    assert not team.conversations.exists()


def test_create_a_conversation_on_a_repository(api, key, team, tmp_path, queued_jobs):
    from assistant import jobs
    from assistant.models import Repository
    from tests.urlwalk import _origin

    repo = Repository.objects.create(team=team, name="app", url=str(_origin()))
    by_name = call(api, "POST", "conversations", key=key, body={"repository": "app"})
    assert by_name.status_code == 201, by_name.content
    # A worker prepares the workspace; until then the repository says so.
    assert by_name.json()["repository"]["name"] == "app"
    assert by_name.json()["repository"]["status"] == "preparing"
    jobs.repo_job(*queued_jobs[-1][1])
    got = call(api, "GET", f"conversations/{by_name.json()['id']}", key=key).json()
    assert got["repository"]["status"] == "ready" and got["repository"]["branch"] == "main"
    by_id = call(
        api, "POST", "conversations", key=key, body={"repository": str(repo.uuid), "branch": "main"}
    )
    assert by_id.status_code == 201
    assert by_id.json()["repository"]["id"] == str(repo.uuid)
    # A branch that isn't there: the conversation is made, its repository says why in words.
    response = call(
        api, "POST", "conversations", key=key, body={"repository": "app", "branch": "nope"}
    )
    assert response.status_code == 201
    jobs.repo_job(*queued_jobs[-1][1])
    got = call(api, "GET", f"conversations/{response.json()['id']}", key=key).json()
    assert got["repository"]["status"] == "failed" and "nope" in got["repository"]["error"]
    assert team.conversations.count() == 3


def test_another_teams_repository_is_unknown(api, key, other_team):
    from assistant.models import Repository
    from tests.urlwalk import _origin

    theirs = Repository.objects.create(team=other_team, name="theirs", url=str(_origin()))
    for ref in ("theirs", str(theirs.uuid)):
        response = call(api, "POST", "conversations", key=key, body={"repository": ref})
        assert_error(response, 422, "unknown_repository")


def test_a_conversation_with_its_messages_and_runs(api, key, conversation, alice, no_runs):
    sent = message_send(conversation=conversation, author=alice, content="Hi there")
    reply = Message.objects.create(
        conversation=conversation, role="assistant", content="Hello!", run=sent.run
    )
    Run.objects.filter(pk=sent.run.pk).update(status=RunStatus.SUCCEEDED, model="demo")
    body = call(api, "GET", f"conversations/{conversation.uuid}", key=key).json()
    assert body["id"] == str(conversation.uuid) and body["title"] == "Refactor the parser"
    assert [(m["role"], m["content"], m["author"]) for m in body["messages"]] == [
        ("user", "Hi there", "alice"),
        ("assistant", "Hello!", None),
    ]
    assert set(body["messages"][0]) == {"id", "role", "content", "author", "created"}
    (run,) = body["runs"]
    assert run["id"] == str(sent.run.uuid) and run["status"] == "succeeded"
    assert run["user_message"] == str(sent.message.uuid) and run["message"] == str(reply.uuid)


def test_delete_a_conversation(api, key, conversation):
    response = call(api, "DELETE", f"conversations/{conversation.uuid}", key=key)
    assert response.status_code == 204 and response.content == b""
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert_error(call(api, "GET", f"conversations/{conversation.uuid}", key=key), 404)


# --- Messages --------------------------------------------------------------------------------


def test_post_a_message(api, key, conversation, no_runs, django_capture_on_commit_callbacks):
    path = f"conversations/{conversation.uuid}/messages"
    with django_capture_on_commit_callbacks(execute=True):
        response = call(api, "POST", path, key=key, body={"content": "Go"})
    assert response.status_code == 202
    body = response.json()
    assert body["message"]["content"] == "Go" and body["message"]["role"] == "user"
    assert body["run"]["status"] == "queued"
    assert body["run"]["user_message"] == body["message"]["id"]
    assert no_runs == [body["run"]["id"]]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "missing_field"),
        ({"content": ""}, 422, "invalid_content"),
        ({"content": "   \n"}, 422, "invalid_content"),
        ({"content": "a\x00b"}, 422, "invalid_content"),
        ({"content": 42}, 400, "invalid_field"),
        ({"content": "x", "role": "assistant"}, 400, "unknown_field"),
    ],
)
def test_a_bad_message_is_refused(api, key, conversation, no_runs, body, status, code):
    path = f"conversations/{conversation.uuid}/messages"
    assert_error(call(api, "POST", path, key=key, body=body), status, code)
    assert not conversation.messages.exists() and not no_runs


def test_a_message_over_the_length_limit_is_422(api, key, conversation, settings, no_runs):
    path = f"conversations/{conversation.uuid}/messages"
    content = "x" * (settings.MAX_MESSAGE_CHARS + 1)
    error = assert_error(
        call(api, "POST", path, key=key, body={"content": content}), 422, "invalid_content"
    )
    assert "limit" in error["message"]
    # The longest message fits in a body even written all as \u escapes.
    longest = "é" * settings.MAX_MESSAGE_CHARS
    raw = json.dumps({"content": longest})  # ensure_ascii: \u00e9 each
    assert call(api, "POST", path, key=key, raw=raw).status_code == 202


def test_a_body_over_the_size_limit_is_413(api, key, conversation, settings, no_runs):
    settings.API_MAX_BODY_BYTES = 1000
    path = f"conversations/{conversation.uuid}/messages"
    big = json.dumps({"content": "x" * 2000})
    assert_error(call(api, "POST", path, key=key, raw=big), 413, "body_too_large")
    assert_error(call(api, "POST", "conversations", key=key, raw=big), 413)
    assert not conversation.messages.exists()


# --- Runs and tool calls -----------------------------------------------------------------------


def test_a_run_with_usage_and_tool_calls(api, key, conversation, alice, no_runs):
    from usage.models import UsageRecord

    sent = message_send(conversation=conversation, author=alice, content="Build it")
    for prompt, completion in ((100, 20), (150, 30)):
        UsageRecord.objects.create(
            team=conversation.team,
            user=alice,
            conversation=conversation,
            run=sent.run,
            model="openai/fake-model",
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
    call_ = awaiting_call(sent.run)
    body = call(api, "GET", f"runs/{sent.run.uuid}", key=key).json()
    assert body["status"] == "waiting" and body["error"] == ""
    assert body["usage"] == {"prompt_tokens": 250, "completion_tokens": 50}
    (tool,) = body["tool_calls"]
    assert (tool["id"], tool["name"], tool["status"]) == (
        str(call_.uuid),
        "run_command",
        "awaiting",
    )
    assert body["seq"] == 0 and body["text"] == ""


def test_cancel_a_queued_run(api, key, conversation, alice, no_runs):
    sent = message_send(conversation=conversation, author=alice, content="Build it")
    response = call(api, "POST", f"runs/{sent.run.uuid}/cancel", key=key)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    # Cancelling a finished run is a conflict.
    error = assert_error(call(api, "POST", f"runs/{sent.run.uuid}/cancel", key=key), 409)
    assert error["code"] == "run_finished"


def test_cancel_a_running_run_raises_the_flag(api, key, conversation, alice, no_runs):
    from assistant import streams

    sent = message_send(conversation=conversation, author=alice, content="Build it")
    Run.objects.filter(pk=sent.run.pk).update(status=RunStatus.RUNNING)
    response = call(api, "POST", f"runs/{sent.run.uuid}/cancel", key=key)
    assert response.status_code == 202 and response.json()["status"] == "running"
    assert streams.is_cancel_requested_sync(str(sent.run.uuid))


def test_approve_and_deny_tool_calls(
    api, key, conversation, alice, bob, team, no_runs, django_capture_on_commit_callbacks
):
    sent = message_send(conversation=conversation, author=alice, content="Build it")
    pending = awaiting_call(sent.run)
    path = f"tool-calls/{pending.uuid}/decision"
    with django_capture_on_commit_callbacks(execute=True):
        response = call(api, "POST", path, key=key, body={"decision": "approve"})
    assert response.status_code == 200
    assert response.json()["status"] == "approved" and response.json()["decided_by"] == "alice"
    assert no_runs == [str(sent.run.uuid)]  # queued again
    # Decided once: the second answer is a conflict, saying who was first.
    error = assert_error(call(api, "POST", path, key=key, body={"decision": "deny"}), 409)
    assert "alice already approved" in error["message"]

    second = ToolCall.objects.create(
        run=sent.run, step=2, index=0, call_id="c2", name="run_command",
        status=ToolCallStatus.AWAITING,
    )  # fmt: skip
    bobs_key = make_key(team, bob)
    path = f"tool-calls/{second.uuid}/decision"
    response = call(api, "POST", path, key=bobs_key, body={"decision": "deny"})
    assert response.json()["status"] == "denied" and response.json()["decided_by"] == "bob"


# "always" is a decision too (admins only: tests/test_api_cli_endpoints.py).
@pytest.mark.parametrize(
    "body", [{"decision": "Approve"}, {"decision": "maybe"}, {}, {"decision": True}]
)
def test_a_decision_is_approve_or_deny(api, key, conversation, alice, no_runs, body):
    sent = message_send(conversation=conversation, author=alice, content="Build it")
    pending = awaiting_call(sent.run)
    response = call(api, "POST", f"tool-calls/{pending.uuid}/decision", key=key, body=body)
    assert_error(response, 400)
    pending.refresh_from_db()
    assert pending.status == ToolCallStatus.AWAITING


# --- Scopes, CSRF, methods -----------------------------------------------------------------------


def test_a_read_key_reads_but_cannot_write(api, read_key, conversation, alice, no_runs):
    sent = message_send(conversation=conversation, author=alice, content="Build it")
    pending = awaiting_call(sent.run)
    assert call(api, "GET", "conversations", key=read_key).status_code == 200
    assert call(api, "GET", f"runs/{sent.run.uuid}", key=read_key).status_code == 200
    writes = [
        ("POST", "conversations", {"title": "x"}),
        ("POST", f"conversations/{conversation.uuid}/messages", {"content": "x"}),
        ("DELETE", f"conversations/{conversation.uuid}", None),
        ("POST", f"runs/{sent.run.uuid}/cancel", None),
        ("POST", f"tool-calls/{pending.uuid}/decision", {"decision": "approve"}),
    ]
    for method, path, body in writes:
        response = call(api, method, path, key=read_key, body=body)
        assert_error(response, 403, "insufficient_scope")
    assert Conversation.objects.count() == 1 and conversation.messages.count() == 1
    pending.refresh_from_db()
    assert pending.status == ToolCallStatus.AWAITING


def test_session_writes_need_the_csrf_token(api, alice, conversation, no_runs):
    api.force_login(alice)
    path = f"conversations/{conversation.uuid}/messages"
    assert_error(call(api, "POST", path, body={"content": "x"}), 403, "csrf_failed")
    assert not conversation.messages.exists()
    token = csrf_token(api)
    response = call(api, "POST", path, body={"content": "x"}, headers={"X-CSRFToken": token})
    assert response.status_code == 202


def test_key_requests_need_no_csrf_token(api, key, conversation, no_runs):
    # A CSRF-enforcing client with no cookie and no token: the key alone is enough.
    path = f"conversations/{conversation.uuid}/messages"
    assert call(api, "POST", path, key=key, body={"content": "x"}).status_code == 202


def test_a_key_wins_over_a_session(api, bob, key, team):
    api.force_login(bob)
    assert call(api, "GET", "me", key=key).json()["user"]["email"] == "alice@example.com"


def test_other_methods_are_405_with_allow(api, key, conversation):
    response = call(api, "PUT", f"conversations/{conversation.uuid}", key=key)
    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET, DELETE"
    assert (
        call(api, "POST", f"conversations/{conversation.uuid}/events", key=key).status_code == 405
    )


def test_unknown_api_urls_are_json_404(api, key):
    for path in ("nope", "conversations/not-a-uuid", "me/", ""):
        assert_error(call(api, "GET", path, key=key), 404, "not_found")


# --- Rate limits ---------------------------------------------------------------------------------


def test_requests_over_the_limit_are_429_with_retry_after(api, key, settings, redis_clean):
    settings.API_RATE_PER_MINUTE = 3
    settings.API_KEY_RATE_PER_MINUTE = 3
    statuses = [call(api, "GET", "me", key=key).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    response = call(api, "GET", "me", key=key)
    assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response["X-RateLimit-Remaining"] == "0"


def test_each_key_has_its_own_limit_and_the_person_one_for_all(
    api, team, alice, settings, redis_clean
):
    settings.API_RATE_PER_MINUTE = 5
    settings.API_KEY_RATE_PER_MINUTE = 2
    first, second = make_key(team, alice), make_key(team, alice)
    assert [call(api, "GET", "me", key=first).status_code for _ in range(3)] == [200, 200, 429]
    assert [call(api, "GET", "me", key=second).status_code for _ in range(3)] == [200, 200, 429]
    # The person has made 4 counted requests: one more by session, then the person's limit.
    api.force_login(alice)
    assert [call(api, "GET", "me").status_code for _ in range(2)] == [200, 429]


def test_the_limit_holds_in_embedded_mode_too(api, key, settings):
    settings.REDIS_URL = ""
    settings.API_RATE_PER_MINUTE = 2
    assert [call(api, "GET", "me", key=key).status_code for _ in range(3)] == [200, 200, 429]


# --- Schema and docs -----------------------------------------------------------------------------


def api_routes() -> list[tuple[str, str]]:
    """(route, view name) of every /api/v1/ pattern but the catch-all."""
    (resolver,) = [p for p in get_resolver().url_patterns if str(p.pattern) == "api/v1/"]
    return [
        (str(p.pattern), p.name)
        for p in resolver.url_patterns
        if isinstance(p, URLPattern) and p.name
    ]


def test_the_schema_describes_every_endpoint(api):
    import re

    schema = call(api, "GET", "openapi.json").json()
    assert schema["openapi"].startswith("3.")
    documented = set(schema["paths"])
    for route, _ in api_routes():
        path = "/" + re.sub(r"<uuid:(\w+)>", r"{\1}", route)
        assert path in documented, f"{path} is not in the schema"
    assert len(documented) == len(api_routes())
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], (path, method)
            assert operation["summary"] and operation["operationId"]


def test_the_docs_page_renders_from_the_schema(api, settings):
    response = api.get("/api/v1/docs")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-schema="/api/v1/openapi.json"' in page and "api/docs.js" in page
    from django.contrib.staticfiles import finders

    assert finders.find("api/docs.js")


def test_a_session_creates_in_the_team_it_names(api, bob, team):
    api.force_login(bob)
    token = csrf_token(api)
    headers = {"X-CSRFToken": token}
    response = call(api, "POST", "conversations", body={"title": "x"}, headers=headers)
    assert_error(response, 400, "team_required")
    response = call(api, "POST", "conversations?team=acme", body={"title": "x"}, headers=headers)
    assert response.status_code == 201 and response.json()["team"] == "acme"
    assert Conversation.objects.get().created_by == bob


def test_a_used_up_budget_is_429(api, key, conversation, monkeypatch):
    def refuse(**kwargs):
        raise BudgetExceeded("The team's budget for this month is used up.")

    monkeypatch.setattr("assistant.services.message_send", refuse)
    path = f"conversations/{conversation.uuid}/messages"
    error = assert_error(call(api, "POST", path, key=key, body={"content": "x"}), 429)
    assert error["code"] == "budget_exceeded" and "budget" in error["message"]


def test_messages_sent_with_a_key_are_metered_to_it(api, key, conversation, no_runs):
    from api.models import ApiKey

    path = f"conversations/{conversation.uuid}/messages"
    body = call(api, "POST", path, key=key, body={"content": "x"}).json()
    assert Run.objects.get(uuid=body["run"]["id"]).api_key == ApiKey.objects.get()


def test_export_a_conversation_redacted(api, key, team, alice, conversation, charlie, other_team):
    from assistant.services import message_send
    from tests.api_client import make_key as other_key

    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    message_send(conversation=conversation, author=alice, content=f"My token is {secret}")
    response = call(api, "GET", f"conversations/{conversation.uuid}/export", key=key)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/markdown")
    text = response.content.decode()
    assert "# Refactor the parser" in text and "My token is" in text
    assert secret not in text
    data = call(api, "GET", f"conversations/{conversation.uuid}/export?format=json", key=key)
    assert data.json()["title"] == "Refactor the parser"
    assert secret not in data.content.decode()
    assert_error(
        call(api, "GET", f"conversations/{conversation.uuid}/export?format=pdf", key=key), 400
    )
    outsider = other_key(other_team, charlie)
    assert_error(call(api, "GET", f"conversations/{conversation.uuid}/export", key=outsider), 404)


def test_a_message_while_a_reply_on_the_repository_is_under_way_is_409(api, key, team, no_runs):
    from assistant.models import Repository, Run
    from tests.urlwalk import _origin

    Repository.objects.create(team=team, name="app", url=str(_origin()))
    created = call(api, "POST", "conversations", key=key, body={"repository": "app"})
    path = f"conversations/{created.json()['id']}/messages"
    assert call(api, "POST", path, key=key, body={"content": "first"}).status_code == 202
    error = assert_error(
        call(api, "POST", path, key=key, body={"content": "second"}), 409, "run_in_flight"
    )
    assert "still working" in error["message"]
    assert Run.objects.filter(conversation__uuid=created.json()["id"]).count() == 1


def test_the_docs_examples_are_accepted_as_they_are(api, key, no_runs):
    """The API docs page prefills each body with the spec's example: sent unchanged, it works."""
    from api.openapi import schema

    spec = schema()

    def example(path: str, method: str) -> dict:
        return spec["paths"][path][method]["requestBody"]["content"]["application/json"]["example"]

    created = call(api, "POST", "conversations", key=key, body=example("/conversations", "post"))
    assert created.status_code == 201, created.content
    conversation = created.json()["id"]
    sent = call(
        api,
        "POST",
        f"conversations/{conversation}/messages",
        key=key,
        body=example("/conversations/{conversation_id}/messages", "post"),
    )
    assert sent.status_code == 202, sent.content
    shared = call(
        api,
        "POST",
        f"conversations/{conversation}/shares",
        key=key,
        body=example("/conversations/{conversation_id}/shares", "post"),
    )
    assert shared.status_code == 201, shared.content


class _Gate:
    """A stand-in for a semaphore that says when it is held."""

    def __init__(self) -> None:
        self.held = False
        self.entered = 0

    def __enter__(self) -> None:
        assert not self.held
        self.held, self.entered = True, self.entered + 1

    def __exit__(self, *exc) -> None:
        self.held = False


def test_a_gated_endpoint_admits_and_serves_inside_its_gate(rf, alice, key, monkeypatch):
    """endpoint(gate=…) (api/views.py SEND_GATE): the caller's admission and the view run
    while the gate is held, and it is given back however the view ends."""
    from django.http import JsonResponse

    from api import http

    gate = _Gate()
    seen = []
    real_admit = http.admit

    def admit(request):
        seen.append(("admit", gate.held))
        return real_admit(request)

    monkeypatch.setattr(http, "admit", admit)

    @http.endpoint("POST", gate=gate)  # type: ignore[arg-type]
    def view(request, caller, fail=False):
        seen.append(("view", gate.held))
        if fail:
            raise http.ApiError(409, "conflict", "No.")
        return JsonResponse({})

    def post():
        return rf.post("/x", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert view(post()).status_code == 200
    assert view(post(), fail=True).status_code == 409
    assert seen == [("admit", True), ("view", True)] * 2
    assert gate.entered == 2 and not gate.held


def test_sending_a_message_goes_through_the_send_gate():
    import inspect

    from api import views

    wrapper = views.messages.__wrapped__  # endpoint's, inside csrf_exempt's
    assert inspect.getclosurevars(wrapper).nonlocals["gate"] is views.SEND_GATE


def test_a_session_sends_to_a_conversation_of_the_team_it_names(
    api, bob, conversation, other_team, no_runs
):
    """POST messages finds the conversation with a written-out query (api/views.py _SendTo):
    a session reaches its teams' conversations, narrowed by ?team= when given."""
    from accounts.models import Membership

    api.force_login(bob)  # a member of acme
    headers = {"X-CSRFToken": csrf_token(api)}
    path = f"conversations/{conversation.uuid}/messages"

    def send(query: str = ""):
        return call(api, "POST", path + query, body={"content": "x"}, headers=headers)

    assert_error(send(f"?team={other_team.slug}"), 404, "not_found")  # not bob's team
    Membership.objects.create(team=other_team, user=bob)
    assert_error(send(f"?team={other_team.slug}"), 404, "not_found")  # hers, but not this one's
    assert_error(send("?team=no such"), 404, "not_found")
    assert send("?team=acme").status_code == 202
    Run.objects.filter(conversation=conversation).update(status=RunStatus.SUCCEEDED)
    assert send().status_code == 202
    Membership.objects.filter(team=conversation.team, user=bob).delete()
    assert_error(send(), 404, "not_found")


def test_the_conversation_a_key_sends_to_comes_with_its_team(key, conversation):
    from api.http import Caller
    from api.keys import find_usable
    from api.views import _to_send_to

    found_key, role = find_usable(key)
    caller = Caller(found_key.user, found_key, role)
    found = _to_send_to(caller, None, conversation.uuid)
    assert found == conversation and found.team == conversation.team
    assert found.title == conversation.title and found.updated == conversation.updated
    assert _to_send_to(caller, None, uuid.uuid4()) is None
