"""The team's tool plugins and documentation allowlist (admins only), and the list of installed
plugins for site staff. Routes in tool_settings_urls.py; the team's section is a template
include (``{% team_tools_settings team %}``, templatetags/tool_tags.py) the settings page (or a
Tools page) places."""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts import selectors

from . import plugins, team_tools
from .tools.web import validate_allowlist


def _back(request: HttpRequest, slug: str) -> HttpResponse:
    """To the page the form was on (settings or Tools), if it is this site's, else settings."""
    nxt = request.POST.get("next", "")
    if nxt.startswith(f"/t/{slug}/") and "//" not in nxt:
        return redirect(nxt)
    return redirect("team_settings", slug=slug)


@login_required
@require_POST
def team_plugin_switch(request: HttpRequest, slug: str, plugin: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    enabled = request.POST.get("enabled") == "1"
    try:
        team_tools.set_plugin(
            team=membership.team, name=plugin, enabled=enabled, by=membership.user
        )
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Plugin {plugin} switched {'on' if enabled else 'off'}.")
    return _back(request, slug)


@login_required
@require_POST
def team_docs_allowlist(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    team = membership.team
    try:
        team.docs_allowlist = validate_allowlist(request.POST.get("docs_allowlist", ""))
    except ValueError as exc:
        messages.error(request, f"The documentation allowlist was not saved. {exc}")
    else:
        team.save(update_fields=["docs_allowlist"])
        count = len(team.docs_allowlist.splitlines())
        messages.success(request, f"Documentation allowlist saved ({count} host(s)).")
    return _back(request, slug)


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signed-in staff only; anyone else gets 404, as for a page that isn't there."""

    @login_required
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_staff:
            raise Http404("No such page")
        return view(request, *args, **kwargs)

    return wrapped


@staff_required
@require_GET
def staff_plugins(request: HttpRequest) -> HttpResponse:
    from .models import TeamPlugin

    counts: dict[str, int] = {}
    for name in TeamPlugin.objects.filter(enabled=True).values_list("name", flat=True):
        counts[name] = counts.get(name, 0) + 1
    installed = [(p, counts.get(p.name, 0)) for p in plugins.discover()]
    return render(request, "assistant/staff_plugins.html", {"installed": installed})
