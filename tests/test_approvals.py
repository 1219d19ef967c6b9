"""The team's Approvals page and the nav's badge (issue 16): every command waiting in the
team's conversations with who asked and where, decided in place with the same rules as in the
conversation, counted on every team page, and none of it visible to an outsider."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from assistant.models import Message, Role, Run, RunStatus, ToolCall, ToolCallStatus
from assistant.services import conversation_create

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def waiting_command(conversation, author, command: str, *, status=ToolCallStatus.AWAITING):
    """A turn parked on a command, written with the ORM alone: the browser tests call this
    while Playwright's loop runs, where the services' event publishing can't."""
    message = Message.objects.create(
        conversation=conversation, role=Role.USER, author=author, content=f"please {command}"
    )
    run = Run.objects.create(
        conversation=conversation,
        user_message=message,
        requested_by=author,
        status=RunStatus.WAITING,
    )
    return ToolCall.objects.create(
        run=run,
        step=1,
        index=0,
        call_id="call_1",
        name="run_command",
        arguments=json.dumps({"command": command}),
        status=status,
    )


def test_it_lists_every_command_waiting_in_the_team(
    alice, bob, charlie, team, other_team, conversation, no_runs
):
    second = conversation_create(team=team, author=bob, title="Fix the build")
    waiting_command(conversation, alice, "make test")
    waiting_command(second, bob, "npm ci")
    waiting_command(
        conversation_create(team=team, author=bob, title="Done already"),
        bob,
        "make lint",
        status=ToolCallStatus.DENIED,
    )
    elsewhere = conversation_create(team=other_team, author=charlie, title="Their secret")
    waiting_command(elsewhere, charlie, "cat secrets")

    page = client_for(bob).get("/t/acme/approvals/")
    assert page.status_code == 200
    html = page.content.decode()
    items = html.split('data-testid="approval-item"')[1:]
    assert len(items) == 2
    # Oldest first, each with the conversation, who asked and the command.
    assert "Refactor the parser" in items[0] and "make test" in items[0]
    assert f"Asked by {alice.name}" in items[0]
    assert f'href="/t/acme/c/{conversation.uuid}/"' in items[0]
    assert "Fix the build" in items[1] and "npm ci" in items[1]
    assert 'data-testid="approve"' in items[1] and 'data-testid="deny"' in items[1]
    assert "make lint" not in html and "Their secret" not in html and "cat secrets" not in html
    assert 'data-testid="approvals-badge">2<' in html


def test_the_badge_counts_on_every_team_page(alice, bob, team, conversation, no_runs):
    assert 'data-testid="approvals-badge"' not in client_for(bob).get("/t/acme/").content.decode()
    call = waiting_command(conversation, alice, "make test")
    for path in ("/t/acme/", "/t/acme/members/", f"/t/acme/c/{conversation.uuid}/"):
        html = client_for(bob).get(path).content.decode()
        assert 'data-testid="approvals-badge">1<' in html, path
    badge = client_for(bob).get("/t/acme/approvals/badge/")
    assert badge.status_code == 200
    assert 'data-testid="approvals-badge">1<' in badge.content.decode()
    assert 'hx-trigger="every 20s, approvals-changed from:body"' in badge.content.decode()
    ToolCall.objects.filter(pk=call.pk).update(status=ToolCallStatus.APPROVED)
    badge = client_for(bob).get("/t/acme/approvals/badge/").content.decode()
    assert "approvals-badge" not in badge and ">Approvals<" in badge


def test_a_decision_made_there_is_recorded_and_recounts_the_badge(
    alice, bob, team, conversation, no_runs
):
    call = waiting_command(conversation, alice, "make test")
    response = client_for(bob).post(
        f"/tools/{call.uuid}/decide/", {"decision": "deny"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert json.loads(response.headers["HX-Trigger"]) == {"approvals-changed": {}}
    assert 'data-status="denied"' in response.content.decode()
    call.refresh_from_db()
    assert call.status == ToolCallStatus.DENIED and call.decided_by == bob
    html = client_for(bob).get("/t/acme/approvals/").content.decode()
    assert 'data-testid="approvals-empty"' in html


def test_always_allow_stays_for_admins(alice, bob, team, conversation, no_runs):
    call = waiting_command(conversation, alice, "make test")
    html = client_for(bob).get("/t/acme/approvals/").content.decode()
    assert 'data-testid="approvals" data-admin' not in html  # the button stays hidden for Bob
    refused = client_for(bob).post(f"/tools/{call.uuid}/decide/", {"decision": "always"})
    assert "Only team admins can allow a command for good." in refused.content.decode()
    call.refresh_from_db()
    assert call.status == ToolCallStatus.AWAITING
    assert "data-admin" in client_for(alice).get("/t/acme/approvals/").content.decode()


def test_an_outsider_gets_404(alice, charlie, team, other_team, conversation, no_runs):
    waiting_command(conversation, alice, "make test")
    for path in ("/t/acme/approvals/", "/t/acme/approvals/badge/"):
        assert client_for(charlie).get(path).status_code == 404, path
    mine = client_for(charlie).get("/t/other/approvals/").content.decode()
    assert "make test" not in mine and 'data-testid="approvals-empty"' in mine
