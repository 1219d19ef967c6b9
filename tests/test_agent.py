"""The agent loop on a real repository: the fake provider scripts the tool calls over real HTTP,
the tools run in the sandbox, and runs execute on the worker loop as in a Celery worker.

Approval decisions go through the web views, as a person's click would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.test import Client

from assistant import agent, jobs, repos, sandbox, services
from assistant.models import (
    Approval,
    Message,
    Repository,
    Run,
    RunStatus,
    ToolCall,
    ToolCallStatus,
)
from assistant.runner import run_on_worker_loop
from tests.helpers import sleep_seconds, sleepers, wait_until
from usage.models import UsageRecord

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"),
]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Origin",
    "GIT_AUTHOR_EMAIL": "origin@example.com",
    "GIT_COMMITTER_NAME": "Origin",
    "GIT_COMMITTER_EMAIL": "origin@example.com",
}
APP = "def answer():\n    return 41\n\n\ndef other():\n    return 'x'\n"


def tool(name: str, **args) -> str:
    return f"[[tool {name} {json.dumps(args)}]]"


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return done.stdout.decode()


@pytest.fixture
def parent() -> Path:
    # Not under pytest's tmp_path (0700): as root the sandbox runs as nobody.
    path = Path(tempfile.mkdtemp(prefix="tandem-agent-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def origin(parent) -> Path:
    path = parent / "origin"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "app.py").write_text(APP)
    (path / "README.md").write_text("# Answer\n\nComputes the answer.\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Initial commit")
    # Pushing to a non-bare repository's checked-out branch is refused; other branches are fine.
    git(path, "config", "receive.denyCurrentBranch", "refuse")
    return path


@pytest.fixture(autouse=True)
def model(settings, provider_port, parent, no_runs, inline_jobs):
    """The fake provider as the site's model; runs are executed here, never queued to a
    worker (a stack's worker from another test module must not claim them)."""
    settings.LLM_MODEL = "openai/fake-model"
    settings.LLM_API_BASE = f"http://127.0.0.1:{provider_port}/v1"
    settings.LLM_API_KEY = "test-key"
    settings.LLM_MAX_RETRIES = 0
    settings.REPOS_ROOT = parent / "repos"
    settings.AGENT_COMMAND_SECONDS = 20


@pytest.fixture
def workspace(conversation, team, origin):
    repo = Repository.objects.create(team=team, name="answer", url=str(origin))
    return repos.create_workspace(conversation=conversation, repo=repo)


@pytest.fixture
def tree(workspace) -> Path:
    return repos.workspace_path(workspace=workspace)


def send(conversation, author, content: str) -> Run:
    return services.message_send(conversation=conversation, author=author, content=content).run


def execute(run: Run, timeout: float = 60) -> Run:
    run_on_worker_loop(str(run.uuid)).result(timeout)
    run.refresh_from_db()
    return run


def calls_of(run: Run) -> list[ToolCall]:
    return list(run.tool_calls.order_by("step", "index"))


def member_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def decide(user, call: ToolCall, decision: str):
    return member_client(user).post(f"/tools/{call.uuid}/decide/", {"decision": decision})


def reply_of(run: Run) -> str:
    return Message.objects.get(run=run).content


# --- Reading, searching, editing ------------------------------------------------------------


def test_it_reads_greps_and_edits_then_answers(conversation, alice, workspace, tree, no_runs):
    script = (
        tool("read_file", path="app.py")
        + tool("grep", pattern="return 41")
        + tool("edit_file", path="app.py", old_text="return 41", new_text="return 42")
    )
    run = execute(send(conversation, alice, "Fix the answer " + script))

    assert run.status == RunStatus.SUCCEEDED, run.error
    calls = calls_of(run)
    assert [c.name for c in calls] == ["read_file", "grep", "edit_file"]
    assert [c.step for c in calls] == [1, 2, 3]
    assert all(c.status == ToolCallStatus.SUCCEEDED for c in calls), [c.output for c in calls]
    assert all(c.approval == Approval.NOT_NEEDED for c in calls)
    assert "1\tdef answer():" in calls[0].output or "def answer():" in calls[0].output
    assert "app.py" in calls[1].output
    assert (tree / "app.py").read_text() == APP.replace("41", "42")
    # The model saw the edit's result and answered in words; four model calls, four records.
    assert reply_of(run).startswith("Tool result received:")
    assert run.steps == 4
    assert UsageRecord.objects.filter(run=run, kind="llm").count() == 4  # and 3 tool records
    # The turn's diff is kept as two trees.
    assert run.changed_files
    diff = repos.diff_between(workspace=workspace, old=run.tree_before, new=run.tree_after)
    assert "-    return 41" in diff and "+    return 42" in diff


def test_read_only_calls_of_one_answer_run_together_and_in_order(
    conversation, alice, workspace, tree, no_runs, monkeypatch, settings
):
    """Issue 13: the read-only calls of one answer overlap in the sandbox (at most
    AGENT_PARALLEL_TOOLS at a time), an edit waits for them and the calls after it wait for the
    edit; rows, events and the results the model gets are in the model's order."""
    import time

    from assistant import events

    settings.AGENT_PARALLEL_TOOLS = 3
    windows: list[tuple[str, float, float]] = []  # (what, sandbox start, sandbox end)
    real_run, real_publish = sandbox.run, events.publish

    async def timed_run(argv, **kwargs):
        start = time.monotonic()
        try:
            return await real_run(argv, **kwargs)
        finally:
            request = kwargs.get("stdin") or b""
            if request.startswith(b'{"op": '):  # a tool's helper (not the server's own git)
                what = json.loads(request)
                windows.append((f"{what['op']} {what['args']}", start, time.monotonic()))

    published: list[tuple[str, str]] = []  # (event, call id)

    async def recorded(conversation_id, event):
        if event["t"] in ("tool.started", "tool.finished"):
            published.append((event["t"], event["call"]["id"]))
        await real_publish(conversation_id, event)

    monkeypatch.setattr(sandbox, "run", timed_run)
    monkeypatch.setattr(events, "publish", recorded)
    script = (
        tool("read_file", path="app.py")
        + tool("grep", pattern="return")
        + tool("list_files", pattern="*")
        + tool("read_file", path="README.md")
        + tool("edit_file", path="app.py", old_text="return 41", new_text="return 42")
        + tool("read_file", path="app.py")
        + tool("git_status")
        + "[[parallel=1]]"
    )
    run = execute(send(conversation, alice, "Look around, then fix it " + script))

    assert run.status == RunStatus.SUCCEEDED, run.error
    calls = calls_of(run)
    names = ["read_file", "grep", "list_files", "read_file", "edit_file", "read_file", "git_status"]
    assert [c.name for c in calls] == names and {c.step for c in calls} == {1}
    failed = [(c.name, c.status, c.output[-300:]) for c in calls if c.status != "succeeded"]
    assert not failed
    assert "return 41" in calls[0].output and "Computes the answer" in calls[3].output
    assert "return 42" in calls[5].output  # after the edit, never beside it
    by_index = dict(enumerate(sorted(windows, key=lambda w: w[1])))
    assert len(by_index) == 7
    first, edit, after = [by_index[i] for i in range(4)], by_index[4], [by_index[5], by_index[6]]
    assert edit[0].startswith("edit_file")
    # Overlap: some read-only call started before another one had ended; never more than 3.
    overlapping = max(sum(1 for w in first if w[1] <= t < w[2]) for _, t, _ in first)
    assert 2 <= overlapping <= 3, first
    # The edit is a barrier both ways.
    assert edit[1] >= max(w[2] for w in first) and min(w[1] for w in after) >= edit[2]
    # Viewers: started in the model's order, each finished after its own start, the edit
    # started only once everything before it had finished.
    index = {str(c.uuid): c.index for c in calls}
    published = [(kind, index[call_id]) for kind, call_id in published]
    started = [i for kind, i in published if kind == "tool.started"]
    assert started == list(range(7))
    for i in range(7):
        assert published.index(("tool.started", i)) < published.index(("tool.finished", i))
    edit_start = published.index(("tool.started", 4))
    assert all(published.index(("tool.finished", i)) < edit_start for i in range(4))
    # The model got the results in its order: the reply quotes the last one (git_status).
    assert reply_of(run).startswith("Tool result received: " + calls[6].output[:20])


def test_an_edit_that_fails_is_reported_to_the_model(conversation, alice, workspace, tree, no_runs):
    script = tool("edit_file", path="app.py", old_text="return 99", new_text="return 0")
    run = execute(send(conversation, alice, script))

    assert run.status == RunStatus.SUCCEEDED
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.FAILED
    assert "not found" in call.output.lower()
    assert "Error:" in reply_of(run)  # the fake echoes the start of the tool result
    assert (tree / "app.py").read_text() == APP
    assert not run.changed_files


def test_arguments_that_are_not_json_fail_the_call_not_the_run(conversation, alice, workspace):
    run = send(conversation, alice, "hello")
    Run.objects.filter(pk=run.pk).update(steps=1)
    ToolCall.objects.create(
        run=run, step=1, index=0, call_id="c1", name="read_file", arguments='{"path": '
    )
    # The model's next answer is scripted by the user message (plain demo text here).
    run = execute(run)
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.FAILED
    assert "not valid JSON" in call.output
    assert run.status == RunStatus.SUCCEEDED


def test_paths_outside_the_workspace_fail_as_tool_errors(conversation, alice, workspace, no_runs):
    script = tool("read_file", path="../../../etc/passwd") + tool("read_file", path="/etc/passwd")
    run = execute(send(conversation, alice, script))
    assert run.status == RunStatus.SUCCEEDED
    for call in calls_of(run):
        assert call.status == ToolCallStatus.FAILED
        assert "root:" not in call.output


# --- Approvals ------------------------------------------------------------------------------


def test_a_command_waits_for_approval_then_runs(conversation, alice, bob, workspace, tree, no_runs):
    run = execute(send(conversation, alice, tool("run_command", command="echo hi > out.txt")))

    # Parked: no worker holds it, the command has not run.
    assert run.status == RunStatus.WAITING
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.AWAITING
    assert call.approval == Approval.ASKED
    assert not (tree / "out.txt").exists()
    queued_before = len(no_runs)

    response = decide(bob, call, "approve")
    assert response.status_code == 200
    assert f"Approved by {bob.name}" in response.content.decode()
    call.refresh_from_db()
    assert call.status == ToolCallStatus.APPROVED
    assert call.decided_by == bob and call.decided_at is not None
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert no_runs[queued_before:] == [str(run.uuid)]  # queued again for a worker

    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    call.refresh_from_db()
    assert call.status == ToolCallStatus.SUCCEEDED
    assert call.exit_code == 0
    assert (tree / "out.txt").read_text() == "hi\n"
    assert reply_of(run).startswith("Tool result received:")

    # A second decision changes nothing and says who was first.
    response = decide(alice, call, "deny")
    assert "already approved" in response.content.decode()
    call.refresh_from_db()
    assert call.status == ToolCallStatus.SUCCEEDED


def test_a_denied_command_is_reported_to_the_model(conversation, alice, bob, workspace, tree):
    run = execute(send(conversation, alice, tool("run_command", command="touch denied.txt")))
    (call,) = calls_of(run)
    decide(bob, call, "deny")
    call.refresh_from_db()
    assert call.status == ToolCallStatus.DENIED
    assert call.decided_by == bob

    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    assert not (tree / "denied.txt").exists()
    assert f"{bob.name} denied this command" in reply_of(run)


def test_allowlisted_commands_run_without_asking(conversation, team, alice, workspace, tree):
    team.command_allowlist = "echo\npython3 -c"
    team.save()
    run = execute(send(conversation, alice, tool("run_command", command="echo allowed")))
    (call,) = calls_of(run)
    assert run.status == RunStatus.SUCCEEDED
    assert call.approval == Approval.ALLOWLISTED
    assert call.output.startswith("allowed")

    # Shell syntax after an allowed prefix is a second command: it asks.
    run = execute(send(conversation, alice, tool("run_command", command="echo ok; touch x")))
    assert run.status == RunStatus.WAITING
    assert calls_of(run)[0].status == ToolCallStatus.AWAITING


def test_a_guarded_entry_asks_after_a_file_was_written_in_the_run(
    conversation, team, alice, workspace, tree
):
    team.command_allowlist = "python3"
    team.command_allowlist_guarded = "python3"
    team.save()
    # Nothing written yet in this run: allowlisted.
    run = execute(send(conversation, alice, tool("run_command", command="python3 -V")))
    assert calls_of(run)[0].approval == Approval.ALLOWLISTED
    # A file written first: the same prefix asks, so what was written can't run unseen.
    script = tool("write_file", path="evil.py", content="print('pwned')\n") + tool(
        "run_command", command="python3 evil.py"
    )
    run = execute(send(conversation, alice, script))
    assert run.status == RunStatus.WAITING
    assert [(c.name, c.status) for c in calls_of(run)] == [
        ("write_file", ToolCallStatus.SUCCEEDED),
        ("run_command", ToolCallStatus.AWAITING),
    ]
    # A read-only command in between does not count as a change.
    script = tool("run_command", command="ls") + tool("run_command", command="python3 -V")
    team.command_allowlist = "python3\nls"
    team.save()
    services.run_cancel(run=run)
    run = execute(send(conversation, alice, script))
    assert [c.approval for c in calls_of(run)] == [Approval.ALLOWLISTED] * 2


def test_only_admins_can_always_allow(conversation, team, alice, bob, workspace, no_runs):
    run = execute(send(conversation, alice, tool("run_command", command="make check")))
    (call,) = calls_of(run)

    response = decide(bob, call, "always")  # bob is a plain member
    assert "Only team admins" in response.content.decode()
    call.refresh_from_db()
    assert call.status == ToolCallStatus.AWAITING
    team.refresh_from_db()
    assert team.command_allowlist == ""

    response = decide(alice, call, "always")
    call.refresh_from_db()
    assert call.status == ToolCallStatus.APPROVED and call.decided_by == alice
    team.refresh_from_db()
    assert team.command_allowlist == "make check"
    # Next time the same command runs without asking.
    execute(run)
    run2 = execute(send(conversation, alice, tool("run_command", command="make check -k")))
    assert calls_of(run2)[0].approval == Approval.ALLOWLISTED


def test_stop_while_waiting_keeps_the_text_and_cancels_the_command(
    conversation, alice, workspace, tree
):
    run = execute(send(conversation, alice, tool("run_command", command="touch never.txt")))
    assert run.status == RunStatus.WAITING
    services.run_cancel(run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.CANCELLED
    # Deciding afterwards is refused in words; nothing runs.
    response = decide(alice, call, "approve")
    assert "stopped" in response.content.decode()
    assert not (tree / "never.txt").exists()


def test_a_turn_stopped_while_waiting_gets_its_diff_from_the_worker(
    conversation, alice, workspace, tree, inline_jobs
):
    script = tool("write_file", path="NOTES.md", content="kept\n") + tool(
        "run_command", command="touch never.txt"
    )
    run = execute(send(conversation, alice, script))
    assert run.status == RunStatus.WAITING
    services.run_cancel(run=run)
    # The web process only finished the run; its files were read by the job, not the request.
    assert ("finish_stopped", (str(run.uuid),)) in inline_jobs
    run.refresh_from_db()
    assert run.changed_files
    assert [f["path"] for f in run.diff.files] == ["NOTES.md"]
    assert "+kept" in run.diff.text
    workspace.refresh_from_db()
    assert workspace.tree == run.tree_after


def test_stop_during_a_command_kills_it(settings, conversation, team, alice, workspace, tree):
    # Neither the command nor its time limit would end it within the test: only Stop can.
    settings.AGENT_COMMAND_SECONDS = 3600
    team.command_allowlist = "sleep"
    team.save()
    seconds = sleep_seconds()
    run = send(conversation, alice, tool("run_command", command=f"sleep {seconds}"))
    future = run_on_worker_loop(str(run.uuid))
    wait_until(lambda: sleepers(seconds), what="the command started", timeout=60)
    services.run_cancel(run=run)
    future.result(60)  # only so that a command Stop failed to kill can't hang the suite
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.CANCELLED
    wait_until(lambda: not sleepers(seconds), what="the command's process is gone")


def test_stop_cancels_every_read_only_call_running_together(
    settings, conversation, alice, workspace, monkeypatch
):
    import asyncio

    settings.AGENT_PARALLEL_TOOLS = 2
    running: list[str] = []
    cancelled: list[str] = []
    real_run = sandbox.run

    async def slow_run(argv, **kwargs):
        request = kwargs.get("stdin") or b""
        if not request.startswith(b'{"op": '):
            return await real_run(argv, **kwargs)
        # A read-only call that takes its time (a grep over a huge tree, say): only Stop ends
        # it within the test.
        running.append(json.loads(request)["args"]["path"])
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(json.loads(request)["args"]["path"])
            raise
        return await real_run(argv, **kwargs)

    monkeypatch.setattr(sandbox, "run", slow_run)
    script = "".join(tool("read_file", path=p) for p in ("app.py", "README.md", "app.py"))
    run = send(conversation, alice, script + "[[parallel=1]]")
    future = run_on_worker_loop(str(run.uuid))
    wait_until(lambda: len(running) == 2, what="two calls run together", timeout=60)
    services.run_cancel(run=run)
    future.result(60)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert sorted(cancelled) == ["README.md", "app.py"] and len(running) == 2
    statuses = [c.status for c in calls_of(run)]
    assert statuses == [ToolCallStatus.CANCELLED, ToolCallStatus.CANCELLED, ToolCallStatus.PENDING]


def test_the_step_limit_ends_the_run_in_words(settings, conversation, alice, workspace):
    settings.AGENT_MAX_STEPS = 2
    script = "".join(tool("read_file", path="app.py") for _ in range(3))
    run = execute(send(conversation, alice, script))
    assert run.status == RunStatus.FAILED
    assert "stopped after 2 steps" in run.error
    assert len(calls_of(run)) == 2


def test_the_token_limit_ends_the_run_in_words(settings, conversation, alice, workspace):
    settings.AGENT_MAX_TOKENS = 10
    script = tool("read_file", path="app.py") + tool("read_file", path="README.md")
    run = execute(send(conversation, alice, script))
    assert run.status == RunStatus.FAILED
    assert "tokens" in run.error


# --- Keeping the work: diff, undo, patch, push ------------------------------------------------


def edit_run(conversation, alice, old: str, new: str, path: str = "app.py") -> Run:
    run = execute(
        send(conversation, alice, tool("edit_file", path=path, old_text=old, new_text=new))
    )
    assert run.status == RunStatus.SUCCEEDED and run.changed_files, run.error
    return run


def test_undo_reverts_one_turn_and_keeps_the_next(conversation, alice, bob, workspace, tree):
    first = edit_run(conversation, alice, "return 41", "return 42")
    second = edit_run(conversation, alice, "return 'x'", "return 'y'")
    assert (tree / "app.py").read_text() == APP.replace("41", "42").replace("'x'", "'y'")

    page = member_client(bob).get(f"/runs/{first.uuid}/")
    assert "Changed 1 file" in page.content.decode()
    assert "Undo these changes" in page.content.decode()

    response = member_client(bob).post(f"/runs/{first.uuid}/undo/")
    assert response.status_code == 200
    assert f"undone by {bob.name}" in response.content.decode()
    assert (tree / "app.py").read_text() == APP.replace("'x'", "'y'")
    first.refresh_from_db()
    assert first.undone_by == bob

    again = member_client(bob).post(f"/runs/{first.uuid}/undo/")
    assert "already undone" in again.content.decode()
    second.refresh_from_db()
    assert second.undone_at is None


def test_undo_runs_in_the_worker_and_the_bubble_says_so(
    conversation, alice, bob, workspace, tree, queued_jobs
):
    first = edit_run(conversation, alice, "return 41", "return 42")
    second = edit_run(conversation, alice, "return 42", "return 43")
    response = member_client(bob).post(f"/runs/{first.uuid}/undo/")
    # The web process only asked: the files are untouched until the worker does it.
    assert "Undoing these changes" in response.content.decode()
    assert 'data-testid="undo"' not in response.content.decode()
    assert queued_jobs == [("undo", (str(first.uuid),))]
    assert "return 43" in (tree / "app.py").read_text()
    again = member_client(alice).post(f"/runs/{first.uuid}/undo/")
    assert "being undone already" in again.content.decode()
    # The later turn changed the same line: the worker refuses, and the bubble says why.
    jobs.undo(str(first.uuid))
    page = member_client(bob).get(f"/runs/{first.uuid}/").content.decode()
    assert "Undo could not be applied" in page and "app.py" in page
    assert 'data-testid="undo"' in page  # it can be asked again, once the cause is gone
    first.refresh_from_db()
    assert first.undone_at is None and first.undo_requested_by is None
    assert "return 43" in (tree / "app.py").read_text()
    # Undo the later turn first, then this one: both go through.
    for run in (second, first):
        member_client(bob).post(f"/runs/{run.uuid}/undo/")
        jobs.undo(str(run.uuid))
    assert (tree / "app.py").read_text() == APP
    workspace.refresh_from_db()
    assert workspace.tree == repos.snapshot(workspace=workspace)  # what the patch is made of


def test_undo_refuses_while_the_assistant_works(conversation, alice, workspace, no_runs):
    first = edit_run(conversation, alice, "return 41", "return 42")
    send(conversation, alice, "another question")  # queued, not executed
    response = member_client(alice).post(f"/runs/{first.uuid}/undo/")
    assert "Wait until the assistant has finished" in response.content.decode()


def test_the_patch_has_every_change_of_the_conversation(conversation, alice, workspace, origin):
    client = member_client(alice)
    url = f"/t/acme/c/{conversation.uuid}/patch/"
    empty = client.get(url)
    assert empty.status_code == 409
    assert "not changed any files" in empty.content.decode()

    edit_run(conversation, alice, "return 41", "return 42")
    execute(send(conversation, alice, tool("write_file", path="NEW.md", content="new file\n")))
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    patch = b"".join(response.streaming_content)  # written by the worker (a job, run at once here)
    # It applies to the base commit and gives the conversation's files.
    check = Path(tempfile.mkdtemp(prefix="tandem-patch-"))
    try:
        git(check, "clone", "-q", str(origin), "copy")
        copy = check / "copy"
        (check / "p.patch").write_bytes(patch)
        git(copy, "apply", str(check / "p.patch"))
        assert (copy / "app.py").read_text() == APP.replace("41", "42")
        assert (copy / "NEW.md").read_text() == "new file\n"
    finally:
        shutil.rmtree(check)


def test_push_to_a_new_branch_authored_by_the_pusher(conversation, alice, bob, workspace, origin):
    edit_run(conversation, alice, "return 41", "return 42")
    response = member_client(bob).post(
        f"/t/acme/c/{conversation.uuid}/push/", {"branch": "tandem/fix-answer"}, follow=True
    )
    assert "Pushed" in response.content.decode()
    author = git(origin, "log", "-1", "--format=%an <%ae>", "tandem/fix-answer").strip()
    assert author == f"{bob.name} <{bob.email}>"
    assert git(origin, "show", "tandem/fix-answer:app.py") == APP.replace("41", "42")
    # A later push of the same conversation fast-forwards the branch...
    edit_run(conversation, alice, "return 'x'", "return 'z'")
    member_client(bob).post(
        f"/t/acme/c/{conversation.uuid}/push/", {"branch": "tandem/fix-answer"}, follow=True
    )
    assert "return 'z'" in git(origin, "show", "tandem/fix-answer:app.py")
    # ...but never forced: when someone else pushed there meanwhile it is refused in words.
    git(origin, "checkout", "-q", "tandem/fix-answer")
    (origin / "THEIRS.md").write_text("theirs\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "Someone else's commit")
    git(origin, "checkout", "-q", "main")
    theirs = git(origin, "rev-parse", "tandem/fix-answer").strip()
    edit_run(conversation, alice, "return 42", "return 43")
    again = member_client(bob).post(
        f"/t/acme/c/{conversation.uuid}/push/", {"branch": "tandem/fix-answer"}, follow=True
    )
    assert "Pushed" not in again.content.decode()
    assert "pick a new name" in again.content.decode()
    assert git(origin, "rev-parse", "tandem/fix-answer").strip() == theirs


# --- The prompt -----------------------------------------------------------------------------


def test_the_next_turn_sees_the_last_turns_tool_calls(conversation, alice, workspace):
    edit_run(conversation, alice, "return 41", "return 42")
    run = send(conversation, alice, "Now explain what you changed")
    prompt = agent._build_prompt(run, "", workspace)
    assert prompt[0]["role"] == "system"
    assert "answer" in prompt[0]["content"]  # the repository's context
    roles = [m["role"] for m in prompt[1:]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    call = prompt[2]["tool_calls"][0]
    assert call["function"]["name"] == "edit_file"
    assert prompt[3]["tool_call_id"] == call["id"]


def test_a_conversation_without_repository_gets_no_tools(conversation, alice):
    run = execute(send(conversation, alice, tool("read_file", path="app.py")))
    # The fake provider still scripts a call; the agent refuses it in words, nothing runs.
    assert run.status == RunStatus.FAILED
    assert "no repository" in run.error


def test_a_plain_reply_takes_four_trips_to_the_database_and_tells_the_hook_its_end(
    conversation, alice, monkeypatch
):
    """Each trip to a pool thread waits for a thread and a connection, and the first word
    waits for those before the model call: the claim with every read (the toolbox's readers
    too), then the prompt with the budget hold; after it, the metering, then the save with
    the run-ended hook (whose receivers get the run as saved, not read again)."""
    import channels.db

    from assistant import hooks

    trips: list[str] = []
    real = channels.db.DatabaseSyncToAsync.thread_handler

    def counted(self, loop, *args, **kwargs):
        trips.append(getattr(self.func, "__name__", repr(self.func)))
        return real(self, loop, *args, **kwargs)

    ended: list[tuple[str, str]] = []

    def on_run_ended(sender, run, **kwargs):
        ended.append((run.status, run.finished and "finished"))

    hooks.run_ended.connect(on_run_ended, dispatch_uid="test.trips")
    try:
        run = send(conversation, alice, "Hello")
        monkeypatch.setattr(channels.db.DatabaseSyncToAsync, "thread_handler", counted)
        run = execute(run)
        monkeypatch.undo()
    finally:
        hooks.run_ended.disconnect(dispatch_uid="test.trips")
    assert run.status == RunStatus.SUCCEEDED
    assert trips == ["_claim_and_read", "_prompt_and_reserve", "_count_step", "_finish_run"]
    assert ended == [(RunStatus.SUCCEEDED, "finished")]


def test_outsiders_cannot_decide_undo_or_download(conversation, alice, charlie, workspace):
    run = execute(send(conversation, alice, tool("run_command", command="ls")))
    (call,) = calls_of(run)
    outsider = member_client(charlie)
    assert decide(charlie, call, "approve").status_code == 404
    assert outsider.post(f"/runs/{run.uuid}/undo/").status_code == 404
    assert outsider.get(f"/t/acme/c/{conversation.uuid}/patch/").status_code == 404
    call.refresh_from_db()
    assert call.status == ToolCallStatus.AWAITING


def test_members_who_left_cannot_decide(conversation, team, alice, bob, workspace):
    run = execute(send(conversation, alice, tool("run_command", command="ls")))
    (call,) = calls_of(run)
    team.memberships.filter(user=bob).delete()
    assert decide(bob, call, "approve").status_code == 404


# --- One request at a time on a repository (issue 11) -----------------------------------------


def test_a_second_message_while_a_reply_is_in_flight_is_refused_in_words(
    conversation, alice, bob, workspace
):
    first = send(conversation, alice, "first question")  # queued, not executed
    response = member_client(bob).post(
        f"/t/acme/c/{conversation.uuid}/messages/", {"content": "a second one"}
    )
    assert response.status_code == 422
    assert "still working on this conversation" in response.content.decode()
    assert Run.objects.filter(conversation=conversation).count() == 1
    with pytest.raises(services.RunInFlight):
        send(conversation, bob, "and a third")
    # The patch and the push wait too, and say so on a page of their own.
    patch = member_client(alice).get(f"/t/acme/c/{conversation.uuid}/patch/")
    assert patch.status_code == 409 and patch["Content-Type"].startswith("text/html")
    assert "Wait until the assistant has finished" in patch.content.decode()
    push = member_client(alice).post(f"/t/acme/c/{conversation.uuid}/push/", {"branch": "x"})
    assert push.status_code == 409
    assert "Wait until the assistant has finished before pushing" in push.content.decode()
    # Once the reply is done the next message goes through.
    execute(first)
    assert send(conversation, bob, "now the second").status == RunStatus.QUEUED


def test_a_turn_whose_changes_cannot_be_read_says_so(conversation, alice, workspace, monkeypatch):
    real = repos.snapshot
    calls = []

    def failing_after_the_first(*, workspace):
        calls.append(1)
        if len(calls) > 1:
            raise repos.RepoError("Reading the changes failed: the disk is full.")
        return real(workspace=workspace)

    monkeypatch.setattr(repos, "snapshot", failing_after_the_first)
    run = execute(send(conversation, alice, "hello"))
    assert run.status == RunStatus.SUCCEEDED and not run.tree_after
    assert run.error == (
        "The changes of this reply could not be recorded: "
        "Reading the changes failed: the disk is full."
    )
    page = member_client(alice).get(f"/runs/{run.uuid}/").content.decode()
    assert "could not be recorded" in page and "the disk is full" in page
