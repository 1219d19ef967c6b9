"""Plugins and documentation lookup in real runs: the fake provider (real HTTP) calls the DevOps
toolkit's k8s_validate on a real workspace, and fetch_url in a conversation without a repository;
each call is a ToolCall and a `tool` usage record, and the plugin's prompt section goes with
its tools only."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from assistant import plugins, repos, sandbox, services, team_tools
from assistant.models import Repository, Run, RunStatus, ToolCallStatus
from assistant.runner import run_on_worker_loop
from assistant.tools import toolbox
from usage.models import UsageRecord

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"),
]
DEVOPS = Path(__file__).resolve().parent.parent / "plugins" / "devops"
BROKEN = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: three
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - {name: web, image: "nginx:1.27"}
"""


@pytest.fixture
def devops_installed(tmp_path, monkeypatch) -> Iterator[None]:
    """The DevOps toolkit discoverable: as installed by make, or from the checkout with a
    dist-info of its own on sys.path."""
    if "devops" not in plugins.loaded():
        if importlib.util.find_spec("tandem_devops") is None:
            monkeypatch.syspath_prepend(str(DEVOPS))
        info = tmp_path / "tandem_devops-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: tandem-devops\nVersion: 0.1.0\n"
        )
        (info / "entry_points.txt").write_text("[tandem.tools]\ndevops = tandem_devops:plugin\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        plugins.discover(refresh=True)
    assert "devops" in plugins.loaded()
    yield
    monkeypatch.undo()
    plugins.discover(refresh=True)


@pytest.fixture
def parent() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tandem-plugins-agent-"))
    path.chmod(0o711)  # as root the sandbox runs as nobody
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def model(settings, provider_port, parent, no_runs):
    settings.LLM_MODEL = "openai/fake-model"
    settings.LLM_API_BASE = f"http://127.0.0.1:{provider_port}/v1"
    settings.LLM_API_KEY = "test-key"
    settings.LLM_MAX_RETRIES = 0
    settings.REPOS_ROOT = parent / "repos"


@pytest.fixture
def workspace(conversation, team, parent):
    origin = parent / "origin"
    (origin / "deploy").mkdir(parents=True)
    (origin / "deploy" / "app.yaml").write_text(BROKEN)
    env = {"GIT_AUTHOR_NAME": "O", "GIT_AUTHOR_EMAIL": "o@example.com", "PATH": "/usr/bin:/bin"}
    env |= {"GIT_COMMITTER_NAME": "O", "GIT_COMMITTER_EMAIL": "o@example.com", "HOME": "/tmp"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=origin, env=env, check=True, capture_output=True)
    repo = Repository.objects.create(team=team, name="infra", url=str(origin))
    return repos.create_workspace(conversation=conversation, repo=repo)


def run_message(conversation, author, content: str) -> Run:
    run = services.message_send(conversation=conversation, author=author, content=content).run
    run_on_worker_loop(str(run.uuid)).result(60)
    run.refresh_from_db()
    return run


def tool(name: str, **args) -> str:
    return f"[[tool {name} {json.dumps(args)}]]"


def test_the_agent_runs_a_plugin_tool_on_the_workspace(
    devops_installed, conversation, team, alice, workspace
):
    team_tools.set_plugin(team=team, name="devops", enabled=True, by=alice)
    message = "Check the manifests. " + tool("k8s_validate", kubernetes_version="1.30")
    run = run_message(conversation, alice, message)
    assert run.status == RunStatus.SUCCEEDED, run.error
    call = run.tool_calls.get()
    assert call.name == "k8s_validate" and call.status == ToolCallStatus.FAILED
    assert "deploy/app.yaml:6: Deployment web: spec.replicas: 'three' is not of type" in call.output
    # The fake model's answer after the tool: the start of the result it was given.
    assert run.assistant_message.content.startswith("Tool result received: Error: 1 error(s)")
    record = UsageRecord.objects.get(run=run, kind="tool")
    assert record.model == "k8s_validate"


def test_a_plugin_switched_off_is_not_offered(devops_installed, conversation, alice, workspace):
    run = run_message(conversation, alice, tool("k8s_validate"))
    call = run.tool_calls.get()
    assert call.status == ToolCallStatus.FAILED and "Unknown tool “k8s_validate”" in call.output


def test_the_prompt_section_goes_with_the_tools(devops_installed, team, alice, workspace):
    team_tools.set_plugin(team=team, name="devops", enabled=True, by=alice)

    def box(ws):
        return asyncio.run(toolbox.build(toolbox.ToolboxRequest(team=team, workspace=ws)))

    with_repo = box(workspace)
    assert "## DevOps toolkit" in with_repo.prompt_text()
    names = {s["function"]["name"] for s in with_repo.schemas(workspace=True)}
    assert {"k8s_validate", "dockerfile_lint", "secrets_scan", "read_file"} <= names
    assert with_repo.get("k8s_validate").source == "plugin:devops"
    without = box(None)
    assert "DevOps" not in without.prompt_text()
    assert without.schemas(workspace=False) is None  # nothing without a repository here


@pytest.fixture
def docs_server() -> Iterator[int]:
    """A documentation stand-in on 127.0.0.1, on a loop of its own (the run uses the worker's)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<h1>Tandem API</h1><p>POST /api/v1/messages</p>", content_type="text/html"
        )

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/api", page)
        box["runner"] = runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert ready.wait(10)
    yield box["port"]
    asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_fetch_url_works_without_a_repository(settings, docs_server, conversation, team, alice):
    settings.FETCH_URL_ALLOW_PRIVATE = True
    team.docs_allowlist = "127.0.0.1"
    team.save(update_fields=["docs_allowlist"])
    url = f"http://127.0.0.1:{docs_server}/api"
    run = run_message(conversation, alice, tool("fetch_url", url=url))
    assert run.status == RunStatus.SUCCEEDED, run.error
    call = run.tool_calls.get()
    assert call.status == ToolCallStatus.SUCCEEDED, call.output
    assert "# Tandem API" in call.output and "POST /api/v1/messages" in call.output
    assert UsageRecord.objects.get(run=run, kind="tool").model == "fetch_url"
    # Off the list: refused in words, nothing fetched.
    team.docs_allowlist = "docs.example.com"
    team.save(update_fields=["docs_allowlist"])
    run = run_message(conversation, alice, tool("fetch_url", url=url))
    call = run.tool_calls.get()
    assert call.status == ToolCallStatus.FAILED
    assert "127.0.0.1 is not on this team's documentation allowlist" in call.output
