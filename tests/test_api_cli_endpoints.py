"""The /api/v1/ endpoints added for the command-line client (api/extra_views.py), in process:
approvals, "always", share links, diff, patch, undo and usage — what each answers, to whom
(an outsider gets 404), and the errors in words."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from django.test import Client

from assistant import repos
from assistant.models import Repository, Run, RunStatus, ToolCall, ToolCallStatus
from assistant.services import message_send
from sharing.models import ShareLink, SharingPolicy
from tests.api_client import assert_error, call, make_key

pytestmark = pytest.mark.django_db

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Origin",
    "GIT_AUTHOR_EMAIL": "origin@example.com",
    "GIT_COMMITTER_NAME": "Origin",
    "GIT_COMMITTER_EMAIL": "origin@example.com",
}


@pytest.fixture(autouse=True)
def no_rate_limit(settings):
    settings.API_RATE_PER_MINUTE = 0
    settings.API_KEY_RATE_PER_MINUTE = 0


@pytest.fixture
def api():
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def key(team, alice):
    return make_key(team, alice)


@pytest.fixture
def bob_key(team, bob):
    return make_key(team, bob, name="bob's")


@pytest.fixture
def outsider(other_team, charlie):
    return make_key(other_team, charlie, name="charlie's")


def awaiting(conversation, author, command: str = "make") -> ToolCall:
    run = message_send(conversation=conversation, author=author, content="Build it").run
    Run.objects.filter(pk=run.pk).update(status=RunStatus.WAITING)
    return ToolCall.objects.create(
        run=run,
        step=1,
        index=0,
        call_id="call_1",
        name="run_command",
        arguments=f'{{"command": "{command}"}}',
        status=ToolCallStatus.AWAITING,
    )


# --- Approvals -----------------------------------------------------------------------------------


def test_approvals_lists_the_teams_waiting_commands(
    api, key, outsider, conversation, alice, no_runs
):
    call_ = awaiting(conversation, alice)
    body = call(api, "GET", "approvals", key=key).json()
    (item,) = body["data"]
    assert item["id"] == str(call_.uuid) and item["status"] == "awaiting"
    assert item["conversation"] == str(conversation.uuid)
    assert item["conversation_title"] == "Refactor the parser" and item["team"] == "acme"
    assert call(api, "GET", "approvals", key=outsider).json() == {"data": []}
    assert_error(call(api, "GET", "approvals?team=acme", key=outsider), 404)

    call(api, "POST", f"tool-calls/{call_.uuid}/decision", key=key, body={"decision": "deny"})
    assert call(api, "GET", "approvals", key=key).json() == {"data": []}


def test_always_is_for_admins(api, key, bob_key, outsider, conversation, alice, team, no_runs):
    from assistant import policy

    call_ = awaiting(conversation, alice, "make test")
    path = f"tool-calls/{call_.uuid}/decision"
    assert_error(call(api, "POST", path, key=bob_key, body={"decision": "always"}), 403)
    assert_error(call(api, "POST", path, key=outsider, body={"decision": "always"}), 404)
    body = call(api, "POST", path, key=key, body={"decision": "always"}).json()
    assert body["status"] == "approved" and body["decided_by"] == alice.name
    team.refresh_from_db()
    assert policy.command_allowed("make test", policy.prefixes(team))


# --- Share links ---------------------------------------------------------------------------------


def test_share_a_conversation(api, key, outsider, conversation, team):
    path = f"conversations/{conversation.uuid}/shares"
    body = call(api, "POST", path, key=key).json()
    assert body["audience"] == "team" and body["mode"] == "snapshot" and body["expires"]
    assert "/s/" in body["url"] and body["url"].startswith("http")
    link = ShareLink.objects.get(uuid=body["id"])
    assert link.conversation == conversation

    error = assert_error(call(api, "POST", path, key=key, body={"audience": "public"}), 422)
    assert "admins have not allowed" in error["message"]
    SharingPolicy.objects.update_or_create(team=team, defaults={"allow_public_links": True})
    response = call(
        api, "POST", path, key=key, body={"audience": "public", "mode": "live", "expiry": "never"}
    )
    assert response.status_code == 201
    assert response.json()["mode"] == "live" and response.json()["expires"] is None
    # The link works for anyone.
    token_path = response.json()["url"].split("://", 1)[1].split("/", 1)[1]
    assert Client().get("/" + token_path).status_code == 200

    assert_error(call(api, "POST", path, key=key, body={"expiry": "3y"}), 422)
    assert_error(call(api, "POST", path, key=outsider), 404)
    read = make_key(team, conversation.created_by, scope="read", name="reader")
    assert_error(call(api, "POST", path, key=read), 403, "insufficient_scope")


# --- Diff, patch, undo ---------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return done.stdout.decode()


@pytest.fixture
def tree(settings, conversation, team):
    # Not under pytest's tmp_path (0700): as root the sandbox (git runs there too) is nobody.
    parent = Path(tempfile.mkdtemp(prefix="tandem-cli-api-"))
    parent.chmod(0o711)
    settings.REPOS_ROOT = parent / "repos"
    origin = parent / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "app.py").write_text("answer = 41\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "Initial commit")
    repo = Repository.objects.create(team=team, name="answer", url=str(origin))
    workspace = repos.create_workspace(conversation=conversation, repo=repo)
    yield repos.workspace_path(workspace=workspace)
    shutil.rmtree(parent, ignore_errors=True)


def finished_turn(conversation, alice, tree, new_text: str) -> Run:
    """A turn that changed app.py, as the worker leaves it: trees before and after, the
    workspace's last tree, and (not yet) its stored diff."""
    workspace = conversation.workspace
    run = message_send(conversation=conversation, author=alice, content="Fix it").run
    before = repos.snapshot(workspace=workspace)
    (tree / "app.py").write_text(new_text)
    after = repos.snapshot(workspace=workspace)
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.SUCCEEDED, tree_before=before, tree_after=after
    )
    type(workspace).objects.filter(pk=workspace.pk).update(tree=after)
    run.refresh_from_db()
    return run


def test_diff_and_patch_of_a_conversation(
    api, key, outsider, conversation, alice, tree, no_runs, monkeypatch
):
    from assistant import diffs, jobs

    asked = []
    monkeypatch.setattr(jobs, "enqueue", lambda name, *args: asked.append((name, *args)))
    base = f"conversations/{conversation.uuid}"
    assert call(api, "GET", f"{base}/diff", key=key).json() == {"data": []}
    error = assert_error(call(api, "GET", f"{base}/patch", key=key), 409, "no_changes")
    assert "not changed any files" in error["message"]

    run = finished_turn(conversation, alice, tree, "answer = 42\n")
    (turn,) = call(api, "GET", f"{base}/diff", key=key).json()["data"]
    assert turn["run"] == str(run.uuid) and turn["pending"] is True  # the worker is asked
    assert asked == [("record_diff", str(run.uuid))]
    diffs.record(run)  # what the worker does
    (turn,) = call(api, "GET", f"{base}/diff", key=key).json()["data"]
    assert turn["pending"] is False and turn["undone"] is False
    assert turn["added"] == 1 and turn["deleted"] == 1
    assert turn["files"] == [
        {"path": "app.py", "old_path": "", "status": "M", "added": 1, "deleted": 1}
    ]
    assert "-answer = 41\n+answer = 42" in turn["text"]

    # A worker writes the patch: 202 until it is there, then the bytes from the database.
    waiting = call(api, "GET", f"{base}/patch", key=key)
    assert waiting.status_code == 202 and waiting.json()["status"] == "preparing"
    assert waiting["Retry-After"] == "1"
    assert asked[-1][0] == "repo_job"
    jobs.repo_job(asked[-1][1])
    patch = call(api, "GET", f"{base}/patch", key=key)
    assert patch.status_code == 200 and patch["Content-Type"].startswith("text/x-diff")
    assert b"+answer = 42" in b"".join(patch.streaming_content)
    assert "attachment" in patch["Content-Disposition"]

    for path in (f"{base}/diff", f"{base}/patch"):
        assert_error(call(api, "GET", path, key=outsider), 404)


def test_diff_without_a_repository_says_so(api, key, conversation):
    error = assert_error(
        call(api, "GET", f"conversations/{conversation.uuid}/diff", key=key), 409, "no_repository"
    )
    assert error["message"] == "This conversation has no repository."


def test_undo_a_turn(api, key, outsider, conversation, alice, tree, no_runs, monkeypatch):
    from assistant import jobs

    asked = []
    monkeypatch.setattr(jobs, "enqueue", lambda name, *args: asked.append((name, *args)))
    running = message_send(conversation=conversation, author=alice, content="Wait").run
    error = assert_error(call(api, "POST", f"runs/{running.uuid}/undo", key=key), 409)
    assert "Wait until the reply has finished" in error["message"]
    Run.objects.filter(pk=running.pk).update(status=RunStatus.SUCCEEDED)

    run = finished_turn(conversation, alice, tree, "answer = 42\n")
    path = f"runs/{run.uuid}/undo"
    assert_error(call(api, "POST", path, key=outsider), 404)
    response = call(api, "POST", path, key=key)
    assert response.status_code == 202 and response.json()["id"] == str(run.uuid)
    assert asked == [("undo", str(run.uuid))]  # the worker reverts the files
    jobs.undo(str(run.uuid))
    assert (tree / "app.py").read_text() == "answer = 41\n"
    error = assert_error(call(api, "POST", path, key=key), 409)
    assert "already undone" in error["message"]


# --- Usage ---------------------------------------------------------------------------------------


def test_usage_with_and_without_limits(api, key, outsider, alice, team):
    body = call(api, "GET", "usage", key=key).json()
    assert body["team"] == "acme" and body["budget_usd"] is None and body["refusal"] == ""
    assert body["spent_usd"] == 0 and body["tokens_today"] == 0 and body["daily_tokens"] is None

    team.monthly_budget_usd = Decimal("0")
    team.member_daily_tokens = 1000
    team.save()
    body = call(api, "GET", "usage", key=key).json()
    assert body["budget_usd"] == 0 and body["daily_tokens"] == 1000
    assert "used its monthly budget" in body["refusal"]

    assert_error(call(api, "GET", "usage?team=acme", key=outsider), 404)
    session = Client()
    session.force_login(alice)
    assert_error(call(session, "GET", "usage"), 400, "team_required")
    assert call(session, "GET", "usage?team=acme").json()["team"] == "acme"
