"""Every URL pattern of the site, and how to fill one with real objects of a team.

Used by the access and CSRF tests. A pattern is either on the explicit public allowlist below
(with the reason it is fine) or a team route whose parameters the filler knows; anything else
makes those tests fail, so a new URL can't slip by unchecked.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern

# Public or non-team URLs, by route prefix (first match wins). Each is fine for a reason that
# has nothing to do with team membership.
PUBLIC_PREFIXES = {
    # Django admin: its own staff-only login and permissions, no team-scoped data model.
    "admin/": "Django admin, staff only (its own login and permission checks)",
    # django-allauth: sign-in, sign-up, password reset, email management, OAuth callbacks. They
    # act on the signed-in user's own account, never on a team's objects.
    "accounts/": "allauth account pages (the user's own account only)",
    # Shared conversations: the unguessable token is the authorisation (public links need no
    # account by design); tests/test_sharing.py covers who gets what under it.
    "s/": "share links: the secret token is the authorisation (tests/test_sharing.py)",
    # The JSON API authenticates by key or session itself and answers 401/404 in JSON, never a
    # sign-in redirect; tests/test_api_access.py walks every route under it for outsiders.
    "api/v1/": "JSON API: its own auth and JSON errors (walked by tests/test_api_access.py)",
    # Slack's requests (signature-checked, no session: tests/test_slack.py), the OAuth callback
    # (bound to the admin's session) and one-time account links (the token is the authorisation).
    "slack/": "Slack: signed requests, OAuth callback, one-time links (tests/test_slack*.py)",
}
# Static files and /healthz have no URL pattern: middleware answers them, public by nature.
PUBLIC_ROUTES = {
    "": "home: redirects the signed-in user to one of their own teams",
    "teams/new/": "create a team; the creator becomes its owner",
    "invite/<str:token>/": "invitation link: the secret token is the authorisation",
}

# Site-staff pages: no team in the URL; 404 to anyone signed in who is not staff (is_staff).
# Walked by test_outsiders.test_it_hides_staff_pages_from_everyone_else.
STAFF_PREFIXES = {"staff/": "site-wide pages for site staff (is_staff), 404 for anyone else"}

# Parameters the walker knows how to fill, with the key of the value in a ``world`` dict.
TEAM_PARAMS = {
    "slug": "slug",  # the team's slug
    "conversation_id": "conversation_id",  # a conversation of the team
    "run_id": "run_id",  # a run in one of the team's conversations
    "user_id": "user_id",  # a member of the team (not the owner)
    "invitation_id": "invitation_id",  # an open invitation of the team
    "call_id": "call_id",  # a tool call awaiting approval in one of the team's runs
    "link_id": "link_id",  # a share link of one of the team's conversations, made by the owner
    "plugin": "plugin",  # a tool plugin's name (assistant/plugins.py), switched per team
    "server_id": "server_id",  # an MCP server of the team (the Tools page)
    "tool_id": "tool_id",  # a tool of that server
    "repository_id": "repository_id",  # a repository of the team
    "job_id": "job_id",  # a push of one of the team's conversations (the API's /jobs/)
}

# Pages only owners and admins may use: a plain member gets 404 there.
ADMIN_ONLY = {
    "team_settings",
    "team_settings_test",
    "invitation_revoke",
    "repositories",
    "repository_fetch",
    "repository_status",
    "repository_remove",
    "repository_setup",
    "repository_rebuild",
    "repository_forge",
    "team_agent_policy",
    "team_shares",
    "sharing_policy",
    "usage_dashboard",
    "usage_csv",
    "usage_budget",
    "usage_prices",
    "slack_settings",
    "slack_connect",
    "slack_webhook",
    "slack_channel",
    "slack_kinds",
    "slack_test",
    "slack_disconnect",
    "team_plugin_switch",
    "team_docs_allowlist",
    "mcp_server_add",
    "mcp_server_edit",
    "mcp_server_remove",
    "mcp_server_refresh",
    "mcp_tool_update",
    "audit_log",
}


@dataclass(frozen=True)
class Route:
    route: str  # the pattern as text, e.g. "t/<slug:slug>/c/<uuid:conversation_id>/"
    name: str | None
    params: tuple[str, ...]
    view: str  # module.qualname, for messages

    def url(self, world: dict) -> str:
        """The concrete path for this route, filled from ``world`` (see TEAM_PARAMS)."""
        path = self.route
        for part in _parts(self.route):
            name = part.split(":")[-1]
            # An id the world lacks is one of an object that exists nowhere (for the tests of
            # unknown ids); a real world without it fails its owner's control request.
            value = world.get(TEAM_PARAMS[name]) or uuid.uuid4()
            path = path.replace(f"<{part}>", str(value))
        return "/" + path


def _parts(route: str) -> list[str]:
    parts, rest = [], route
    while "<" in rest:
        start = rest.index("<")
        end = rest.index(">", start)
        parts.append(rest[start + 1 : end])
        rest = rest[end + 1 :]
    return parts


def _walk(resolver, prefix: str = "", params: tuple[str, ...] = (), regex: bool = False):
    for entry in resolver.url_patterns:
        pattern = entry.pattern
        here = params + _params_of(pattern)
        is_regex = regex or isinstance(pattern, RegexPattern)
        if isinstance(entry, URLResolver):
            yield from _walk(entry, prefix + str(pattern), here, is_regex)
        elif isinstance(entry, URLPattern):
            callback = entry.callback
            view = f"{callback.__module__}.{getattr(callback, '__qualname__', callback)}"
            yield prefix + str(pattern), entry.name, here, view, is_regex


def _params_of(pattern) -> tuple[str, ...]:
    if isinstance(pattern, RoutePattern):
        return tuple(pattern.converters)
    if isinstance(pattern, RegexPattern):
        return tuple(pattern.regex.groupindex)
    return ()


def public_reason(route: str) -> str | None:
    if route in PUBLIC_ROUTES:
        return PUBLIC_ROUTES[route]
    for prefix, reason in PUBLIC_PREFIXES.items():
        if route.startswith(prefix):
            return reason
    return None


def classify() -> tuple[list[Route], list[str], list[str]]:
    """(team routes to check, public routes, problems: routes the walker can't fill)."""
    team, public, problems = [], [], []
    for route, name, params, view, is_regex in _walk(get_resolver()):
        if public_reason(route):
            public.append(route)
            continue
        if route.startswith(tuple(STAFF_PREFIXES)):
            continue  # see staff_routes()
        unknown = [p for p in params if p not in TEAM_PARAMS]
        if is_regex:
            problems.append(f"{route} ({view}): regex patterns can't be filled; use path()")
        elif not params:
            problems.append(
                f"{route} ({view}): no team slug or object id; add it to the public "
                "allowlist in tests/urlwalk.py with the reason it is fine, or scope it to a team"
            )
        elif unknown:
            problems.append(
                f"{route} ({view}): the walker can't fill {unknown}; teach TEAM_PARAMS and "
                "the tests' world fixture about it"
            )
        else:
            team.append(Route(route, name, tuple(params), view))
    return team, public, problems


def staff_routes() -> list[Route]:
    """Every route under a STAFF_PREFIXES prefix (they take no parameters)."""
    return [
        Route(route, name, tuple(params), view)
        for route, name, params, view, _ in _walk(get_resolver())
        if route.startswith(tuple(STAFF_PREFIXES)) and not public_reason(route)
    ]


def make_world(*, team, owner, member) -> dict:
    """Real objects of ``team`` (owned by ``owner``; ``member`` becomes a plain member) for
    every parameter in TEAM_PARAMS. Runs are recorded, not queued: callers use ``no_runs``."""
    from accounts.models import Role
    from accounts.services import invitation_create, membership_add
    from assistant import repos
    from assistant.models import RepoJob, RepoJobKind, Repository, ToolCall, ToolCallStatus
    from assistant.services import conversation_create, message_send

    membership_add(team=team, user=member, role=Role.MEMBER)
    conversation = conversation_create(team=team, author=owner, title="Secret plans")
    sent = message_send(conversation=conversation, author=owner, content="The secret is 42")
    invitation = invitation_create(team=team, created_by=owner, email="")
    # The conversation works on a repository, so its patch and push URLs answer the owner.
    repo = Repository.objects.create(team=team, name="secret-repo", url=str(_origin()))
    repos.create_workspace(conversation=conversation, repo=repo)
    push = RepoJob.objects.create(  # done: the page shows its forms, not "pushing…"
        kind=RepoJobKind.PUSH,
        status="done",
        repository=repo,
        conversation=conversation,
        branch="secret",
        result="0" * 40,
        message="Secret plans\n",
    )
    call = ToolCall.objects.create(
        run=sent.run,
        step=1,
        index=0,
        call_id="call_1",
        name="run_command",
        arguments='{"command": "ls"}',
        status=ToolCallStatus.AWAITING,
    )
    from sharing.services import create_link

    link = create_link(
        conversation=conversation, user=owner, audience="team", mode="snapshot", expiry="7d"
    ).link
    from mcpservers.models import Kind, MCPServer, MCPTool

    server = MCPServer.objects.create(
        team=team, name="secret-tickets", kind=Kind.HTTP, url="https://mcp.example.com/mcp"
    )
    mcp_tool = MCPTool.objects.create(server=server, name="s", function_name="secret-tickets__s")
    return {
        "server_id": server.uuid,
        "tool_id": mcp_tool.pk,
        "team": team,
        "slug": team.slug,
        "conversation_id": conversation.uuid,
        "run_id": sent.run.uuid,
        "user_id": member.uuid,
        "invitation_id": invitation.invitation.uuid,
        "call_id": call.uuid,
        "link_id": link.uuid,
        "plugin": "devops",
        "repository_id": repo.uuid,
        "job_id": push.uuid,
        "conversation": conversation,
        "run": sent.run,
    }


_ORIGIN: list[Path] = []


def _origin() -> Path:
    """One small git repository on disk, made once per test process."""
    if not _ORIGIN:
        path = Path(tempfile.mkdtemp(prefix="tandem-urlwalk-origin-"))
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "T",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "T",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        }
        (path / "README.md").write_text("# Secret plans\n")
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
            subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
        _ORIGIN.append(path)
    return _ORIGIN[0]
