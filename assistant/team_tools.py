"""A team's extra tools: the plugins it switched on and documentation lookup.

- :func:`set_plugin` is the one write of a team's plugin switch (``TeamPlugin``);
  :func:`plugin_rows` is what the settings section and the staff page show.
- :func:`enabled_plugins` / :func:`prompt_sections`: what the agent offers and says for a team.
- :func:`plugin_tools` / :func:`web_tools`: the tools as Toolbox entries with their source and
  policy; :func:`plugins_reader` and :func:`web_provider` hand them to each run's Toolbox
  (registered in ``apps.py``), the plugins' prompt sections with them.

A plugin's read-only tools run freely; one that changes files asks a member every time, as
a command off the allowlist does.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from accounts.models import Team, User

from . import plugins
from .models import TeamPlugin
from .tools import toolbox
from .tools.toolbox import Entry, ToolboxRequest
from .tools.web import fetch_url_tool, parse_allowlist, web_search_tool

WEB = "builtin:web"  # documentation lookup's source


@dataclass(frozen=True)
class PluginRow:
    installed: plugins.Installed
    enabled: bool

    @property
    def name(self) -> str:
        return self.installed.name


def enabled_names(team: Team) -> set[str]:
    return set(TeamPlugin.objects.filter(team=team, enabled=True).values_list("name", flat=True))


def plugin_rows(team: Team) -> list[PluginRow]:
    """Every installed plugin, loaded or not, with the team's switch."""
    on = enabled_names(team)
    return [PluginRow(p, p.plugin is not None and p.name in on) for p in plugins.discover()]


def set_plugin(*, team: Team, name: str, enabled: bool, by: User) -> TeamPlugin:
    """Switch the plugin ``name`` on or off for the team. Only a plugin that loaded can be
    switched on (ValueError in words otherwise); off is always allowed."""
    if enabled and name not in plugins.loaded():
        raise ValueError(f"There is no working plugin called “{name}” on this server.")
    with transaction.atomic():
        row, _ = TeamPlugin.objects.select_for_update().get_or_create(team=team, name=name)
        row.enabled, row.changed, row.changed_by = enabled, timezone.now(), by
        row.save()
    return row


def enabled_plugins(team: Team) -> list[plugins.Plugin]:
    """The team's switched-on plugins that loaded in this process, by name."""
    on = enabled_names(team)
    return [p for name, p in sorted(plugins.loaded().items()) if name in on]


def prompt_sections(team: Team) -> list[str]:
    return [p.prompt.strip() for p in enabled_plugins(team) if p.prompt.strip()]


def _plugin_entries(plugin: plugins.Plugin) -> list[Entry]:
    return [
        Entry(
            tool=plugins.as_tool(tool),
            source=f"plugin:{plugin.name}",
            policy=toolbox.AUTO if tool.read_only else toolbox.ASK,
            needs_workspace=tool.needs_workspace,
        )
        for tool in plugin.tools
    ]


def plugin_tools(team: Team) -> list[Entry]:
    return [entry for plugin in enabled_plugins(team) for entry in _plugin_entries(plugin)]


def web_tools(team: Team) -> list[Entry]:
    """fetch_url when the team lists documentation hosts; web_search when the operator set a
    SearXNG URL. Neither needs a workspace; both run freely. Built in, but not in the fixed
    registry the Toolbox runs "builtin" entries through: their own source runs their own code."""
    found = []
    allowlist = parse_allowlist(team.docs_allowlist)
    if allowlist:
        found.append(Entry(fetch_url_tool(allowlist), WEB, toolbox.AUTO, False))
    if (search := web_search_tool()) is not None:
        found.append(Entry(search, WEB, toolbox.AUTO, False))
    return found


def plugins_reader(request: ToolboxRequest) -> list[Entry]:
    """The Toolbox reader of the team's switched-on plugins (with their prompt sections)."""
    entries: list[Entry] = []
    for plugin in enabled_plugins(request.team):
        mine = _plugin_entries(plugin)
        # The section says when to use the tools: only where at least one is offered.
        if plugin.prompt.strip() and (
            request.workspace is not None or any(not e.needs_workspace for e in mine)
        ):
            request.add_prompt(plugin.prompt)
        entries += mine
    return entries


async def web_provider(request: ToolboxRequest) -> list[Entry]:
    """The Toolbox provider of fetch_url and web_search."""
    return web_tools(request.team)
