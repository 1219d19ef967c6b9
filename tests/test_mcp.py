"""MCP servers (issue 17): the client against the stand-in server (tests/mcp_standin.py, written
with the SDK) over stdio inside the sandbox and over streamable HTTP; the address rules of
remote URLs; the Tools page (outsiders 404, members read-only, secrets encrypted at rest); and
an agent run calling a server's tool through the Toolbox, metered by its name."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

from assistant import sandbox
from assistant.llm.bases import BaseRefused, check_saved
from assistant.models import RunStatus, ToolCallStatus
from mcpservers import services
from mcpservers.client import URL_RULES, Connection, MCPFailure, Place, ServerSpec
from mcpservers.models import Kind, MCPServer, MCPTool, Policy
from tests.conftest import free_port, wait_for_port
from tests.test_agent import calls_of, execute, model, parent, send, tool  # noqa: F401
from usage.models import UsageRecord

ROOT = Path(__file__).resolve().parent.parent
needs_bwrap = pytest.mark.skipif(
    not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"
)
# The stand-in inside the sandbox: the host's python3 with the SDK mounted read-only from this
# venv, and tests/ mounted at /opt/standin (MCP_STDIO_MOUNTS in config/test_settings.py).
STANDIN_ARGV = ["env", "PYTHONPATH=/opt/mcp-sdk", "python3", "/opt/standin/mcp_standin.py"]
STDIO = ServerSpec(
    name="standin", kind="stdio", command=STANDIN_ARGV[0], args=(*STANDIN_ARGV[1:], "stdio")
)


async def _calls(conn: Connection, *calls: tuple[str, dict]) -> list[str]:
    """Each call's outcome as "ok: text", "error: text" or "failure: sentence"."""
    out = []
    for name, args in calls:
        try:
            outcome = await conn.call(name, args)
        except MCPFailure as exc:
            out.append(f"failure: {exc}")
        else:
            out.append(f"{'ok' if outcome.ok else 'error'}: {outcome.text}")
    return out


@needs_bwrap
def test_a_stdio_server_runs_in_the_sandbox_for_the_run(settings, worktree):
    settings.MCP_CALL_SECONDS = 2

    async def scenario():
        conn = Connection(STDIO, Place(tree=worktree))
        try:
            names = [t.name for t in await conn.list_tools()]
            results = await _calls(
                conn,
                ("add", {"a": 2, "b": 3}),
                ("list_files", {}),
                ("fail", {"message": "no such ticket"}),
                ("sleep", {"seconds": 30}),
                ("die", {}),
                ("echo", {"text": "back again"}),  # started again after it died
            )
            process = conn._process
        finally:
            await conn.close()
        return names, results, process

    names, results, process = asyncio.run(scenario())
    assert names == ["echo", "add", "fail", "sleep", "die", "list_files"]
    assert results[0] == "ok: 5"
    assert results[1] == "ok: README.md"  # the workspace, mounted where it runs
    assert results[2] == "error: Error executing tool fail: no such ticket"
    assert results[3] == "failure: The MCP server standin did not run sleep within 2 s."
    assert results[4] == (
        "failure: The MCP server standin stopped (exit code 3); it said: standin: dying as asked."
    )
    assert results[5] == "ok: echo: back again"
    assert process is not None and not process.running  # close() stopped it


@needs_bwrap
def test_start_up_errors_are_sentences(worktree):
    def start(command: str, *args: str) -> str:
        spec = ServerSpec(name="broken", kind="stdio", command=command, args=args)

        async def scenario():
            conn = Connection(spec, Place(tree=worktree))
            try:
                await conn.list_tools()
            finally:
                await conn.close()

        with pytest.raises(MCPFailure) as failure:
            asyncio.run(scenario())
        return str(failure.value)

    exits = start("python3", "-c", "import sys; print('missing API_TOKEN', file=sys.stderr)")
    assert exits == (
        "The MCP server broken exited while starting (exit code 0); it said: missing API_TOKEN."
    )
    missing = start("no-such-mcp-server")
    assert missing.startswith("The MCP server broken exited while starting")
    assert "no-such-mcp-server" in missing


@pytest.fixture
def http_standin():
    """The stand-in over streamable HTTP on the host, asking for a bearer token."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "mcp_standin.py"), "http", str(port), "s3cret"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "MCP stand-in")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait(5)


def test_a_remote_server_over_streamable_http(settings, http_standin):
    settings.MCP_CALL_SECONDS = 2
    spec = ServerSpec(
        name="remote", kind="http", url=http_standin, headers={"Authorization": "Bearer s3cret"}
    )

    async def scenario():
        try:
            await Connection(ServerSpec(name="remote", kind="http", url=http_standin)).list_tools()
        except MCPFailure as exc:
            no_token = str(exc)
        conn = Connection(spec)
        try:
            names = [t.name for t in await conn.list_tools()]
            results = await _calls(
                conn,
                ("add", {"a": 40, "b": 2}),
                ("fail", {"message": "quota exceeded"}),
                ("sleep", {"seconds": 30}),
                ("die", {}),
            )
        finally:
            await conn.close()
        return no_token, names, results

    no_token, names, results = asyncio.run(scenario())
    assert no_token.startswith("The MCP server remote could not start:")
    assert "401" in no_token
    assert "add" in names and "die" in names
    assert results[0] == "ok: 42"
    assert results[1] == "error: Error executing tool fail: quota exceeded"
    assert results[2] == "failure: The MCP server remote did not run sleep within 2 s."
    assert results[3].startswith("failure: The MCP server remote could not run die:")


def test_remote_urls_follow_the_address_rules(settings):
    settings.MCP_ALLOW_PRIVATE_URLS = True
    for url in ("http://169.254.169.254/mcp", "http://[fe80::1]/mcp", "http://metadata/mcp"):
        with pytest.raises(BaseRefused):
            check_saved(url, URL_RULES)  # never, whatever the operator allows
    check_saved("http://10.1.2.3/mcp", URL_RULES)
    check_saved("https://mcp.example.com/mcp", URL_RULES)

    settings.MCP_ALLOW_PRIVATE_URLS = False
    settings.LLM_ALLOW_PRIVATE_BASES = True  # the LLM's switch does not open it for MCP
    with pytest.raises(BaseRefused) as refused:
        check_saved("http://10.1.2.3/mcp", URL_RULES)
    assert "MCP_ALLOW_PRIVATE_URLS=true" in str(refused.value)
    assert str(refused.value).startswith("The MCP server URL 10.1.2.3 points at 10.1.2.3")

    # Checked again before connecting, with the name resolved (localhost is loopback).
    spec = ServerSpec(name="local", kind="http", url="http://localhost:9/mcp")
    with pytest.raises(MCPFailure) as failure:
        asyncio.run(Connection(spec).list_tools())
    assert "private or loopback address" in str(failure.value)


# --- The Tools page -----------------------------------------------------------------------------


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """Refreshes the page asks for, recorded instead of sent to a worker."""
    asked: list[int] = []
    monkeypatch.setattr(services, "refresh_queue", lambda server: asked.append(server.pk))
    return asked


@pytest.fixture
def server(team) -> MCPServer:
    made = services.server_save(
        team=team, name="tickets", kind=Kind.HTTP, url="https://mcp.example.com/mcp",
        headers={"Authorization": "Bearer tok-123"},
    )  # fmt: skip
    MCPTool.objects.create(server=made, name="search", function_name="tickets__search")
    return made


@pytest.mark.django_db
def test_outsiders_get_404_for_the_page_and_every_action(charlie, server, queued):
    tool_id = server.tools.get().pk
    base = f"/t/{server.team.slug}/tools/"
    one = f"{base}servers/{server.uuid}/"
    client = client_of(charlie)
    for url in (base, one, f"{one}edit/"):
        assert client.get(url).status_code == 404, url
    for url in (
        f"{base}servers/add/",
        f"{one}edit/",
        f"{one}remove/",
        f"{one}refresh/",
        f"{one}tools/{tool_id}/",
    ):
        assert client.post(url, {"name": "x", "kind": "stdio", "command": "x"}).status_code == 404
    assert MCPServer.objects.filter(pk=server.pk, name="tickets").exists()
    assert queued == []


@pytest.mark.django_db
def test_members_see_the_page_read_only(bob, server, queued):
    client = client_of(bob)
    page = client.get(f"/t/{server.team.slug}/tools/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "tickets__search" in text and "Ask every time" in text
    assert "Add an MCP server" not in text and "Refresh tools" not in text
    one = f"/t/{server.team.slug}/tools/servers/{server.uuid}/"
    assert client.post(f"{one}refresh/").status_code == 404
    tool_id = server.tools.get().pk
    assert client.post(f"{one}tools/{tool_id}/", {"enabled": "on"}).status_code == 404
    assert not MCPTool.objects.get(pk=tool_id).enabled


@pytest.mark.django_db
def test_an_admin_adds_a_server_whose_secrets_are_encrypted_at_rest(alice, team, queued):
    client = client_of(alice)
    response = client.post(
        f"/t/{team.slug}/tools/servers/add/",
        {
            "name": "docs",
            "kind": "http",
            "url": "https://mcp.example.com/mcp",
            "token": "tok-secret-987",
            "headers": "X-Team: acme-secret-header",
            "enabled": "on",
        },
    )
    assert response.status_code == 302
    server = MCPServer.objects.get(team=team, name="docs")
    assert queued == [server.pk]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM mcpservers_mcpserver WHERE id = %s", [server.pk])
        row = " ".join(map(str, cursor.fetchone()))
    assert "tok-secret-987" not in row and "acme-secret-header" not in row
    assert server.headers == {
        "X-Team": "acme-secret-header",
        "Authorization": "Bearer tok-secret-987",
    }
    page = client.get(f"/t/{team.slug}/tools/").content.decode()
    edit = client.get(f"/t/{team.slug}/tools/servers/{server.uuid}/edit/").content.decode()
    assert "tok-secret-987" not in page + edit and "(token/headers stored)" in page

    # A change that leaves the token and headers empty keeps them.
    client.post(
        f"/t/{team.slug}/tools/servers/{server.uuid}/edit/",
        {"name": "docs", "kind": "http", "url": "https://mcp.example.com/v2/mcp"},
    )
    server.refresh_from_db()
    assert server.headers["Authorization"] == "Bearer tok-secret-987"
    assert not server.enabled


@pytest.mark.django_db
def test_bad_input_is_refused_in_words(alice, team, server, queued):
    client = client_of(alice)
    cases = [
        ({"name": "Tickets!", "kind": "stdio", "command": "x"}, "lowercase letters"),
        ({"name": "tickets", "kind": "stdio", "command": "x"}, "already has a server named"),
        ({"name": "a", "kind": "stdio", "command": ""}, "needs a command"),
        ({"name": "b", "kind": "stdio", "command": "npx 'unclosed"}, "could not be read"),
        ({"name": "c", "kind": "http", "url": ""}, "needs its URL"),
        ({"name": "d", "kind": "http", "url": "http://169.254.169.254/"}, "metadata"),
        ({"name": "e", "kind": "http", "url": "https://x.example", "headers": "oops"}, "Name: v"),
    ]
    for data, words in cases:
        response = client.post(f"/t/{team.slug}/tools/servers/add/", data)
        assert response.status_code == 400, data
        assert words in response.content.decode(), (data, response.content.decode()[-600:])
    assert MCPServer.objects.filter(team=team).count() == 1
    assert queued == []


def test_refresh_lists_tools_and_keeps_the_admins_choices(db, team, http_standin):
    server = services.server_save(
        team=team, name="standin", kind=Kind.HTTP, url=http_standin,
        headers={"Authorization": "Bearer s3cret"},
    )  # fmt: skip
    services.refresh(server.pk)
    tools = {t.name: t for t in server.tools.all()}
    assert set(tools) == {"echo", "add", "fail", "sleep", "die", "list_files"}
    echo = tools["echo"]
    assert echo.function_name == "standin__echo" and echo.description == "Say the text back."
    assert not echo.enabled and echo.policy == Policy.ASK  # off, and asking, until an admin says
    services.tool_set(tool=echo, enabled=True, policy=Policy.AUTO)

    MCPTool.objects.filter(pk=echo.pk).update(description="old")
    services.refresh(server.pk)
    echo.refresh_from_db()
    assert (echo.enabled, echo.policy, echo.description) == (True, "auto", "Say the text back.")

    server.headers = {}  # the stand-in answers 401 now
    server.save()
    services.refresh(server.pk)
    server.refresh_from_db()
    assert server.refresh_error.startswith("The MCP server standin could not start:")
    assert server.tools.count() == 6  # the last listing stays


def test_function_names_fit_the_providers_rules():
    assert services.function_name("git", "search_issues", set()) == "git__search_issues"
    assert services.function_name("git", "repo/search.v2", set()) == "git__repo_search_v2"
    long = services.function_name("a" * 20, "t" * 80, set())
    assert len(long) == 64 and long.startswith("a" * 20 + "__")
    clash = services.function_name("git", "a.b", {"git__a_b"})
    assert clash != "git__a_b" and clash.startswith("git__a_b_")


# --- Through the agent --------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.django_db(transaction=True)
def test_the_agent_calls_a_stdio_tool_without_a_repository(conversation, alice, team, no_runs):
    server = services.server_save(
        team=team, name="standin", kind=Kind.STDIO, command=STANDIN_ARGV[0],
        args=[*STANDIN_ARGV[1:], "stdio"],
    )  # fmt: skip
    for name in ("echo", "list_files"):
        MCPTool.objects.create(
            server=server, name=name, function_name=f"standin__{name}", enabled=True,
            policy=Policy.AUTO, input_schema={"type": "object", "properties": {}},
        )  # fmt: skip
    MCPTool.objects.create(server=server, name="add", function_name="standin__add")  # off

    script = tool("standin__echo", text="hello") + tool("standin__list_files")
    run = execute(send(conversation, alice, script + tool("standin__add", a=1, b=2)))

    assert run.status == RunStatus.SUCCEEDED, run.error
    echo, files, add = calls_of(run)
    assert (echo.status, echo.output) == (ToolCallStatus.SUCCEEDED, "echo: hello")
    assert files.output == "(empty)"  # no repository: a scratch folder of its own
    assert add.status == ToolCallStatus.FAILED and "Unknown tool" in add.output  # not enabled
    # Metered like a built-in tool, under the server's and the tool's name.
    metered = set(UsageRecord.objects.filter(run=run, kind="tool").values_list("model", flat=True))
    assert {"standin__echo", "standin__list_files"} <= metered
    # The run's end stopped the server: no stand-in left running in a sandbox.
    ps = subprocess.run(["pgrep", "-f", "/opt/standin/mcp_standin.py"], capture_output=True)
    assert ps.stdout == b""


@pytest.mark.django_db
def test_always_allow_is_for_commands_only(conversation, alice, team):
    """A team tool's arguments may hold a "command": approving its call with "always" must not
    put that on the allowlist of run_command."""
    from assistant import services as chat
    from assistant.errors import ChatError
    from assistant.models import ToolCall

    run = send(conversation, alice, "hello")
    call = ToolCall.objects.create(
        run=run, step=1, index=0, call_id="c1", name="deploy__run",
        arguments='{"command": "rm -rf /"}', status=ToolCallStatus.AWAITING,
    )  # fmt: skip
    with pytest.raises(ChatError, match="Only commands can be allowed for good"):
        chat.tool_call_decide(call=call, user=alice, decision="always", is_admin=True)
    team.refresh_from_db()
    assert team.command_allowlist == ""
    call.refresh_from_db()
    assert call.status == ToolCallStatus.AWAITING  # still waiting for a real answer
