"""The per-run toolbox: the team's own tools (from providers: plugins, MCP servers) beside the
built-in ones, each under its policy, with what a provider starts for a run stopped at its end.

Runs go through the real agent loop with the fake provider over HTTP, as in test_agent.py."""

from __future__ import annotations

import asyncio

import pytest

from assistant.models import Approval, RunStatus, ToolCallStatus
from assistant.tools import ToolResult, toolbox
from assistant.tools.base import Tool, params
from tests.test_agent import (  # noqa: F401 (fixtures)
    calls_of,
    decide,
    execute,
    model,
    origin,
    parent,
    reply_of,
    send,
    tool,
    workspace,
)
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)


class Provider:
    """A provider as an app would register one: entries per team, a resource per run."""

    def __init__(self, *, fail: Exception | None = None):
        self.fail = fail
        self.started: list[str] = []
        self.closed: list[str] = []
        self.ran: list[dict] = []

    async def __call__(self, request: toolbox.ToolboxRequest) -> list[toolbox.Entry]:
        if self.fail:
            raise self.fail
        run_id = str(request.run.uuid)
        self.started.append(run_id)

        async def close() -> None:
            self.closed.append(run_id)

        request.on_close(close)
        request.add_prompt("Use team_echo to repeat words back.")

        async def echo(ctx, args) -> ToolResult:
            self.ran.append(args)
            return ToolResult(ok=True, output=args["words"].upper())

        def make(name: str, policy: str) -> toolbox.Entry:
            spec = params(["words"], words={"type": "string"})
            return toolbox.Entry(
                Tool(name, "Repeat words.", spec, read_only=True, run=echo),
                source="plugin:test",
                policy=policy,
                needs_workspace=False,
            )

        return [
            make("team_echo", toolbox.AUTO),
            make("team_ask", toolbox.ASK),
            make("team_never", toolbox.NEVER),
            make("read_file", toolbox.AUTO),  # can't shadow the built-in
        ]


@pytest.fixture
def provider():
    made = Provider()
    toolbox.register_provider(made)
    yield made
    toolbox.unregister_provider(made)


def test_a_teams_tool_runs_without_a_repository_and_its_resources_stop(
    conversation, alice, provider, no_runs
):
    run = execute(send(conversation, alice, tool("team_echo", words="hello there")))
    assert run.status == RunStatus.SUCCEEDED, run.error
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.SUCCEEDED
    assert call.output == "HELLO THERE"
    assert provider.closed == provider.started == [str(run.uuid)]
    # Metered like a built-in tool, by its name.
    assert UsageRecord.objects.filter(run=run, kind="tool", model="team_echo").exists()


def test_ask_parks_the_run_until_a_member_approves(conversation, alice, bob, provider, no_runs):
    run = execute(send(conversation, alice, tool("team_ask", words="may i")))
    assert run.status == RunStatus.WAITING
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.AWAITING and call.approval == Approval.ASKED
    assert provider.ran == []
    assert provider.closed == [str(run.uuid)]  # parked: what it started for the run stopped

    assert decide(bob, call, "approve").status_code == 200
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    call.refresh_from_db()
    assert call.status == ToolCallStatus.SUCCEEDED and call.output == "MAY I"
    assert provider.closed == [str(run.uuid)] * 2  # once per execution


def test_never_is_refused_in_words_and_not_run(conversation, alice, provider, no_runs):
    run = execute(send(conversation, alice, tool("team_never", words="no")))
    assert run.status == RunStatus.SUCCEEDED, run.error
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.FAILED
    assert "switched off for this team" in call.output
    assert provider.ran == []


@pytest.mark.usefixtures("workspace")
def test_a_built_in_tool_cannot_be_shadowed(conversation, alice, provider, no_runs):
    run = execute(send(conversation, alice, tool("read_file", path="app.py")))
    (call,) = calls_of(run)
    assert call.status == ToolCallStatus.SUCCEEDED
    assert "def answer" in call.output  # the built-in read the file; the plugin's didn't run
    assert provider.ran == []


def test_the_toolbox_offers_per_policy_and_says_what_is_missing(conversation, team, provider):
    async def build(*providers):
        for extra in providers:
            toolbox.register_provider(extra)
        try:
            request = toolbox.ToolboxRequest(team=team, conversation=conversation, run=run_like)
            return await toolbox.build(request)
        finally:
            for extra in providers:
                toolbox.unregister_provider(extra)

    class RunLike:
        uuid = "r1"

    run_like = RunLike()
    broken = Provider(fail=RuntimeError("the MCP server 'tickets' did not start"))
    box = asyncio.run(build(broken))
    offered = {e.name for e in box.offered(workspace=False)}
    assert offered == {"team_echo", "team_ask"}  # "never" is not offered; built-ins need a repo
    with_repo = {e.name for e in box.offered(workspace=True)}
    assert {"read_file", "run_command", "team_echo"} <= with_repo
    assert "team_never" not in with_repo
    text = box.prompt_text()
    assert "Use team_echo" in text
    assert "the MCP server 'tickets' did not start" in text
    assert "read_file of plugin:test was left out" in text
    with pytest.raises(ValueError):
        toolbox.Toolbox([toolbox.Entry(box.entries["team_echo"].tool, policy="sometimes")])


def test_readers_answer_in_registration_order_in_one_trip_or_read_ahead(team):
    """Readers (providers that only read the database) are asked together in one trip to a
    pool thread, or ahead by the caller (the agent's claim) through read(); either way the
    entries keep the order the providers were registered in, and a reader that fails is a
    note, not a failed build."""
    threads: list[str] = []

    def entry(name: str, source: str) -> toolbox.Entry:
        async def run(ctx, args):
            return ToolResult(ok=True, output="")

        tool = Tool(name, "A tool.", params([]), read_only=True, run=run)
        return toolbox.Entry(tool, source=source, needs_workspace=False)

    def first(request):
        import threading

        threads.append(threading.current_thread().name)
        return [entry("dup", "reader:first"), entry("only_first", "reader:first")]

    async def middle(request):
        return [entry("dup", "async:middle"), entry("only_middle", "async:middle")]

    def broken(request):
        raise RuntimeError("the tickets server is unreachable")

    async def build(*, ahead: bool):
        toolbox.register_reader(first)
        toolbox.register_provider(middle)
        toolbox.register_reader(broken)
        try:
            request = toolbox.ToolboxRequest(team=team)
            if not ahead:
                return await toolbox.build(request)
            read = await asyncio.to_thread(toolbox.read, request)
            return await toolbox.build(request, already_read=read)
        finally:
            for extra in (first, middle, broken):
                toolbox.unregister_provider(extra)

    for ahead in (False, True):
        threads.clear()
        box = asyncio.run(build(ahead=ahead))
        assert len(threads) == 1  # asked once, in one thread, either way
        assert box.entries["dup"].source == "reader:first"  # registered first, kept
        assert {"only_first", "only_middle"} <= set(box.entries)
        assert "dup of async:middle was left out" in box.prompt_text()
        assert "the tickets server is unreachable" in box.prompt_text()
