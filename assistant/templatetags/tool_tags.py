"""{% team_tools_settings team %}: the team's plugins and documentation allowlist, a section
any admin page can place (the settings page does; a Tools page may instead)."""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings

from assistant import team_tools

register = template.Library()


@register.inclusion_tag("assistant/_team_tools_settings.html", takes_context=True)
def team_tools_settings(context: template.Context, team: Any) -> dict[str, Any]:
    request = context.get("request")
    return {
        "team": team,
        "rows": team_tools.plugin_rows(team),
        "docs_allowlist": team.docs_allowlist,
        "web_search": bool(settings.SEARXNG_URL),
        "next": request.get_full_path() if request is not None else "",
        "csrf_token": context.get("csrf_token"),
    }
