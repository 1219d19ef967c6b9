"""The agent in the browser, against the production topology (Daphne, a Celery worker, the
scripted fake provider): attach a repository, ask for an edit, approve a command, see the diff,
undo it. A teammate watching sees the same steps live."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from assistant import repos, sandbox
from assistant.models import Repository, Run, RunStatus, ToolCall, ToolCallStatus, Workspace
from tests.test_browser import open_page, run_bubble, send, sign_in_to_conversation

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"),
]
APP = "def answer():\n    return 41\n"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot-agent.png"


@pytest.fixture
def origin() -> Path:
    # Outside pytest's 0700 tmp_path: the Celery worker's sandbox runs commands as nobody.
    parent = Path(tempfile.mkdtemp(prefix="tandem-browser-agent-"))
    parent.chmod(0o711)
    path = parent / "answer"
    path.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "O",
        "GIT_AUTHOR_EMAIL": "o@example.com",
        "GIT_COMMITTER_NAME": "O",
        "GIT_COMMITTER_EMAIL": "o@example.com",
    }
    (path / "app.py").write_text(APP)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    yield path
    shutil.rmtree(parent, ignore_errors=True)


def tool(name: str, **args) -> str:
    return f"[[tool {name} {json.dumps(args)}]]"


def test_attach_edit_approve_diff_undo(stack, new_context, conversation, team, alice, bob, origin):
    Repository.objects.create(team=team, name="answer", url=str(origin))
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, alice.email, conversation)
    watcher = open_page(new_context, "bob", stack)
    sign_in_to_conversation(watcher, bob.email, conversation)

    # Attach the repository (default branch).
    page.get_by_test_id("attach-repository").get_by_role("button", name="Attach").click()
    # A worker prepares the workspace; the header polls until it is there.
    expect(page.get_by_test_id("repository")).to_contain_text("answer @ main", timeout=30_000)
    workspace = Workspace.objects.get(conversation=conversation)
    tree = repos.workspace_path(workspace=workspace)

    run_id = send(
        page,
        "Make the answer 42 and check it "
        + tool("edit_file", path="app.py", old_text="return 41", new_text="return 42")
        + tool("run_command", command="python3 -c 'import app; print(app.answer())'"),
    )
    bubble = run_bubble(page, run_id)
    edit = bubble.locator("[data-tool=edit_file]")
    expect(edit).to_have_attribute("data-status", "succeeded")
    command = bubble.locator("[data-tool=run_command]")
    expect(command).to_have_attribute("data-status", "awaiting")
    expect(command).to_contain_text("python3 -c")
    expect(bubble.locator(".status-text")).to_contain_text("Waiting for a teammate")
    # The teammate sees the same request for approval, live.
    expect(run_bubble(watcher, run_id).locator("[data-tool=run_command]")).to_have_attribute(
        "data-status", "awaiting"
    )
    assert (tree / "app.py").read_text() == "def answer():\n    return 42\n"

    command.get_by_test_id("approve").click()
    expect(command).to_have_attribute("data-status", "succeeded")
    expect(command.get_by_test_id("decision")).to_contain_text(f"Approved by {alice.name}")
    command.locator("summary").click()
    expect(command.get_by_test_id("tool-output")).to_contain_text("42")

    # The finished turn shows its diff, the added line marked, and Undo.
    changes = bubble.get_by_test_id("changes")
    expect(changes).to_contain_text("Changed 1 file")
    expect(changes.get_by_test_id("diff").locator("tr.da")).to_contain_text("    return 42")
    expect(run_bubble(watcher, run_id).get_by_test_id("changes")).to_contain_text("Changed 1")
    run = Run.objects.get(uuid=run_id)
    assert run.status == RunStatus.SUCCEEDED
    call = ToolCall.objects.get(run=run, name="run_command")
    assert call.status == ToolCallStatus.SUCCEEDED and call.decided_by == alice

    if os.environ.get("UPDATE_SCREENSHOT"):
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    changes.get_by_test_id("undo").click()
    expect(bubble.get_by_test_id("undone")).to_contain_text(f"undone by {alice.name}")
    expect(run_bubble(watcher, run_id).get_by_test_id("undone")).to_contain_text("undone")
    assert (tree / "app.py").read_text() == APP
