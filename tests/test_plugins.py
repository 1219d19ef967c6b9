"""Tool plugins (assistant/plugins.py, team_tools.py): discovery through the entry-point group,
a plugin that fails to import, the per-team switch, what the agent is offered, and the pages
(the team's section for admins, the staff list)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from django.test import Client

from assistant import plugins, team_tools
from assistant.models import TeamPlugin

pytestmark = pytest.mark.django_db

GOOD = """
from assistant.plugins import Output, Plugin, PluginTool, worker_tool

async def _echo(ws, args):
    return Output(True, "echo: " + args["text"])

def _count(files, args):
    return Output(True, f"{len(files.files)} file(s)")

plugin = Plugin(
    name="demo",
    title="Demo tools",
    description="Echoes.",
    tools=[
        PluginTool("demo_echo", "Echo text.", {"type": "object", "properties":
                   {"text": {"type": "string"}}, "required": ["text"]}, True, _echo,
                   needs_workspace=False),
        worker_tool(name="demo_write", description="Pretends to write.",
                    parameters={"type": "object", "properties": {}}, files=lambda a: ["*"],
                    function=_count, read_only=False),
    ],
    prompt="Use demo_echo to echo.",
)
"""


def _distribution(root: Path, dist: str, module: str, source: str, entry: str) -> None:
    """A minimal installed distribution: the module and a dist-info with the entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{entry}\n")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Three plugin distributions on sys.path: one that works, one whose import fails, one
    whose entry point names something that is not a Plugin."""
    _distribution(tmp_path, "tandem_demo", "tandem_demo", GOOD, "demo = tandem_demo:plugin")
    _distribution(
        tmp_path,
        "tandem_broken",
        "tandem_broken",
        "import no_such_module_for_tandem\n",
        "broken = tandem_broken:plugin",
    )
    _distribution(tmp_path, "tandem_odd", "tandem_odd", "plugin = 42\n", "odd = tandem_odd:plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = plugins.discover(refresh=True)
    yield {p.entry_point: p for p in found}
    for name in ("tandem_demo", "tandem_broken", "tandem_odd"):
        sys.modules.pop(name, None)
    monkeypatch.undo()
    plugins.discover(refresh=True)


def test_it_finds_installed_plugins_and_lists_broken_ones(installed):
    demo = installed["demo"]
    assert demo.plugin is not None and demo.error == ""
    assert demo.distribution == "tandem_demo" and demo.version == "0.1"
    assert [t.name for t in demo.plugin.tools] == ["demo_echo", "demo_write"]
    broken = installed["broken"]
    assert broken.plugin is None
    assert "ModuleNotFoundError" in broken.error and "no_such_module_for_tandem" in broken.error
    assert installed["odd"].plugin is None
    assert "not an assistant.plugins.Plugin" in installed["odd"].error
    assert set(plugins.loaded()) >= {"demo"} and "broken" not in plugins.loaded()


def test_it_switches_a_plugin_per_team(installed, team, other_team, alice):
    assert team_tools.plugin_tools(team) == []
    team_tools.set_plugin(team=team, name="demo", enabled=True, by=alice)
    tools = {t.tool.name: t for t in team_tools.plugin_tools(team)}
    assert set(tools) == {"demo_echo", "demo_write"}
    assert tools["demo_echo"].policy == "auto" and tools["demo_echo"].source == "plugin:demo"
    assert tools["demo_write"].policy == "ask"  # it changes files: a member approves
    assert tools["demo_echo"].needs_workspace is False
    assert team_tools.prompt_sections(team) == ["Use demo_echo to echo."]
    # Another team is not affected.
    assert team_tools.plugin_tools(other_team) == []
    assert team_tools.prompt_sections(other_team) == []
    team_tools.set_plugin(team=team, name="demo", enabled=False, by=alice)
    assert team_tools.plugin_tools(team) == []


def test_it_refuses_to_switch_on_a_plugin_that_did_not_load(installed, team, alice):
    for name in ("broken", "nothing-installed"):
        with pytest.raises(ValueError, match="no working plugin"):
            team_tools.set_plugin(team=team, name=name, enabled=True, by=alice)
    assert not TeamPlugin.objects.filter(team=team, enabled=True).exists()


def test_a_plugin_tool_runs_as_an_agent_tool(installed, team, alice):
    import asyncio

    from assistant.tools import ToolContext

    team_tools.set_plugin(team=team, name="demo", enabled=True, by=alice)
    echo = next(t.tool for t in team_tools.plugin_tools(team) if t.tool.name == "demo_echo")
    result = asyncio.run(echo.run(ToolContext(tree=Path("/nonexistent")), {"text": "hi"}))
    assert result.ok and result.output == "echo: hi"
    # Without a workspace, a tool that reads files fails in words instead of crashing.
    write = next(t.tool for t in team_tools.plugin_tools(team) if t.tool.name == "demo_write")
    nothing = ToolContext(tree=Path("/nonexistent"), has_workspace=False)
    result = asyncio.run(write.run(nothing, {}))
    assert not result.ok and "no repository" in result.output


def test_admin_switches_it_on_the_settings_page(installed, team, alice, bob, charlie):
    admin = Client()
    admin.force_login(alice)
    page = admin.get("/t/acme/settings/").content.decode()
    assert 'data-plugin="demo"' in page and "Switch on" in page
    assert "could not be loaded" in page and "no_such_module_for_tandem" in page
    response = admin.post("/t/acme/settings/plugins/demo/", {"enabled": "1"})
    assert response.status_code == 302
    assert team_tools.enabled_names(team) == {"demo"}
    assert "Switch off" in admin.get("/t/acme/settings/").content.decode()
    # A member and an outsider get 404 and change nothing.
    for user in (bob, charlie):
        client = Client()
        client.force_login(user)
        assert client.post("/t/acme/settings/plugins/demo/", {"enabled": "0"}).status_code == 404
    assert team_tools.enabled_names(team) == {"demo"}
    # A plugin that did not load can't be switched on: said in words.
    response = admin.post("/t/acme/settings/plugins/broken/", {"enabled": "1"}, follow=True)
    assert "no working plugin called “broken”" in response.content.decode()


def test_staff_see_installed_plugins_with_their_errors(installed, team, alice, django_user_model):
    from tests.conftest import _user

    team_tools.set_plugin(team=team, name="demo", enabled=True, by=alice)
    staff_user = _user(django_user_model, "erin@example.com")
    staff_user.is_staff = True
    staff_user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(staff_user)
    page = client.get("/staff/plugins/").content.decode()
    assert "Demo tools" in page and "tandem_demo 0.1" in page
    assert "demo_write" in page and "(changes files)" in page
    assert "no_such_module_for_tandem" in page and "tandem_odd:plugin" in page
    owner = Client()
    owner.force_login(alice)
    assert owner.get("/staff/plugins/").status_code == 404


def test_the_documentation_allowlist_is_validated(team, alice):
    admin = Client()
    admin.force_login(alice)
    admin.post("/t/acme/settings/docs/", {"docs_allowlist": "Docs.Python.org\n*.k8s.io\n\n"})
    team.refresh_from_db()
    assert team.docs_allowlist == "docs.python.org\n*.k8s.io"
    response = admin.post(
        "/t/acme/settings/docs/", {"docs_allowlist": "https://evil.example/path"}, follow=True
    )
    assert "without scheme, port or path" in response.content.decode()
    team.refresh_from_db()
    assert team.docs_allowlist == "docs.python.org\n*.k8s.io"  # unchanged
    assert [t.tool.name for t in team_tools.web_tools(team)] == ["fetch_url"]


def test_tandem_works_without_any_plugin(team, monkeypatch):
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: [])
    assert plugins.discover(refresh=True) == []
    assert team_tools.plugin_tools(team) == []
    assert team_tools.prompt_sections(team) == []
    plugins.discover(refresh=True)


def test_the_example_in_the_docs_is_a_working_plugin(tmp_path, monkeypatch):
    """docs/plugins.md's example, as written there, loads."""
    doc = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    source = doc.split("```python\n", 1)[1].split("```", 1)[0]
    _distribution(
        tmp_path, "tandem_shellcheck", "tandem_shellcheck", source, "x = tandem_shellcheck:plugin"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = {p.entry_point: p for p in plugins.discover(refresh=True)}
        assert found["x"].plugin is not None, found["x"].error
    finally:
        sys.modules.pop("tandem_shellcheck", None)
        monkeypatch.undo()
        plugins.discover(refresh=True)
