"""The Tools page: a team's MCP servers and their tools. Admins add, change and remove servers,
list a server's tools again, and enable each tool with its policy; members see the page
read-only; anyone else gets 404 for the page and every action. Routes in urls.py, under
t/<slug>/tools/."""

from __future__ import annotations

import re
import shlex

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts import selectors
from accounts.models import Membership
from assistant.llm.bases import BaseRefused, check_saved

from . import services
from .client import URL_RULES
from .models import NAME_MAX, NAME_RE, Kind, MCPServer, MCPTool, Policy, RefreshState

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class ServerForm(forms.Form):
    name = forms.CharField(
        max_length=NAME_MAX,
        help_text="Lowercase letters, digits and dashes; the agent sees its tools as name__tool.",
    )
    kind = forms.ChoiceField(choices=Kind.choices, initial=Kind.STDIO)
    command = forms.CharField(
        max_length=500,
        required=False,
        help_text="stdio: the program and its arguments, as in a shell (e.g. npx -y "
        "@modelcontextprotocol/server-everything). It runs in the sandbox, in the conversation's "
        "workspace, without network; the repository's sandbox image must have it.",
    )
    url = forms.URLField(
        label="URL", max_length=500, required=False, assume_scheme="https",
        help_text="Remote: the server's streamable HTTP endpoint, e.g. https://mcp.example.com/mcp",
    )  # fmt: skip
    token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Remote: sent as Authorization: Bearer …; stored encrypted, never shown again.",
    )
    headers = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Remote: more headers, one “Name: value” per line; stored encrypted. On a "
        "change, leave the token and headers empty to keep the stored ones.",
    )
    clear_headers = forms.BooleanField(label="Remove the stored token and headers", required=False)
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, team, server: MCPServer | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.team, self.server = team, server

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not NAME_RE.match(name):
            raise forms.ValidationError(
                f"The name must be 1 to {NAME_MAX} lowercase letters, digits or dashes, "
                "starting and ending with a letter or digit."
            )
        others = MCPServer.objects.filter(team=self.team, name=name)
        if self.server is not None:
            others = others.exclude(pk=self.server.pk)
        if others.exists():
            raise forms.ValidationError(f"The team already has a server named {name}.")
        return name

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        try:
            check_saved(url, URL_RULES)
        except BaseRefused as exc:
            raise forms.ValidationError(str(exc)) from exc
        return url

    def clean_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for number, line in enumerate(self.cleaned_data["headers"].splitlines(), 1):
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep or not _HEADER_NAME.match(name.strip()) or "\r" in value:
                raise forms.ValidationError(f"Line {number} of the headers is not “Name: value”.")
            headers[name.strip()] = value.strip()
        return headers

    def clean(self) -> dict:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind == Kind.STDIO:
            try:
                words = shlex.split(data.get("command", ""))
            except ValueError as exc:
                self.add_error("command", f"The command could not be read: {exc}.")
                return data
            if not words:
                self.add_error("command", "A stdio server needs a command.")
            data["argv"] = words
        elif kind == Kind.HTTP and not data.get("url") and "url" not in self.errors:
            self.add_error("url", "A remote server needs its URL.")
        return data

    def headers_to_store(self) -> dict[str, str] | None:
        """The headers to save, or None to keep the stored ones."""
        data = self.cleaned_data
        headers = dict(data.get("headers") or {})
        if data.get("token"):
            headers["Authorization"] = f"Bearer {data['token'].strip()}"
        if headers:
            return headers
        return {} if data.get("clear_headers") or self.server is None else None


def _save(form: ServerForm, server: MCPServer | None) -> MCPServer:
    data = form.cleaned_data
    argv = data.get("argv") or [""]
    return services.server_save(
        team=form.team,
        server=server,
        name=data["name"],
        kind=data["kind"],
        command=argv[0],
        args=argv[1:],
        url=data.get("url", ""),
        headers=form.headers_to_store(),
        enabled=data["enabled"],
    )


def _server(membership: Membership, server_id) -> MCPServer:
    server = MCPServer.objects.filter(team=membership.team, uuid=server_id).first()
    if server is None:
        raise Http404("No such server")
    return server


def _command_line(server: MCPServer) -> str:
    return shlex.join([server.command, *server.args]) if server.command else ""


@login_required
@require_GET
def tools_page(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.membership_for(request.user, slug)
    team = membership.team
    servers = list(MCPServer.objects.filter(team=team).prefetch_related("tools"))
    context = {
        "team": team,
        "membership": membership,
        "servers": [_card(server) for server in servers],
        "form": ServerForm(team=team) if membership.is_admin else None,
        "policies": Policy.choices,
    }
    return render(request, "mcpservers/tools.html", context)


def _card(server: MCPServer) -> dict:
    return {
        "server": server,
        "command_line": _command_line(server),
        "has_headers": bool(server.headers_encrypted),
        "tools": [t for t in server.tools.all() if t.listed],
        "gone": [t for t in server.tools.all() if not t.listed],
        "refreshing": server.refresh_state == RefreshState.QUEUED,
    }


@login_required
@require_GET
def server_card(request: HttpRequest, slug: str, server_id) -> HttpResponse:
    """One server's card (htmx polls it while its tools are being listed)."""
    membership = selectors.membership_for(request.user, slug)
    return _render_card(request, membership, _server(membership, server_id))


def _render_card(request: HttpRequest, membership: Membership, server: MCPServer) -> HttpResponse:
    server.refresh_from_db()
    context = {
        "team": membership.team,
        "membership": membership,
        "card": _card(server),
        "policies": Policy.choices,
    }
    return render(request, "mcpservers/_server.html", context)


@login_required
@require_POST
def server_add(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    team = membership.team
    form = ServerForm(request.POST, team=team)
    if not form.is_valid():
        servers = list(MCPServer.objects.filter(team=team).prefetch_related("tools"))
        context = {
            "team": team,
            "membership": membership,
            "servers": [_card(server) for server in servers],
            "form": form,
            "policies": Policy.choices,
        }
        return render(request, "mcpservers/tools.html", context, status=400)
    server = _save(form, None)
    services.refresh_queue(server)
    messages.success(request, f"Added {server.name}; listing its tools.")
    return redirect("mcp_tools", slug=slug)


@login_required
def server_edit(request: HttpRequest, slug: str, server_id) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    server = _server(membership, server_id)
    if request.method == "POST":
        form = ServerForm(request.POST, team=membership.team, server=server)
        if form.is_valid():
            _save(form, server)
            messages.success(request, f"Saved {server.name}.")
            return redirect("mcp_tools", slug=slug)
    else:
        initial = {
            "name": server.name,
            "kind": server.kind,
            "command": _command_line(server),
            "url": server.url,
            "enabled": server.enabled,
        }
        form = ServerForm(initial=initial, team=membership.team, server=server)
    context = {"team": membership.team, "membership": membership, "form": form, "server": server}
    return render(request, "mcpservers/server_edit.html", context)


@login_required
@require_POST
def server_remove(request: HttpRequest, slug: str, server_id) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    server = _server(membership, server_id)
    services.server_delete(server=server)
    messages.success(request, f"Removed {server.name}.")
    return redirect("mcp_tools", slug=slug)


@login_required
@require_POST
def server_refresh(request: HttpRequest, slug: str, server_id) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    server = _server(membership, server_id)
    services.refresh_queue(server)
    if request.htmx:  # type: ignore[attr-defined]
        return _render_card(request, membership, server)
    return redirect("mcp_tools", slug=slug)


@login_required
@require_POST
def tool_update(request: HttpRequest, slug: str, server_id, tool_id: int) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    server = _server(membership, server_id)
    tool = MCPTool.objects.filter(server=server, pk=tool_id).first()
    if tool is None:
        raise Http404("No such tool")
    policy = request.POST.get("policy", tool.policy)
    if policy not in Policy.values:
        messages.error(request, "Choose run freely, ask every time or never.")
        return redirect("mcp_tools", slug=slug)
    services.tool_set(tool=tool, enabled=request.POST.get("enabled") == "on", policy=policy)
    if request.htmx:  # type: ignore[attr-defined]
        return _render_card(request, membership, server)
    messages.success(request, f"Saved {tool.function_name}.")
    return redirect("mcp_tools", slug=slug)
