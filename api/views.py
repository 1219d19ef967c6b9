"""The /api/v1/ endpoints (see api/openapi.py for what each takes and answers)."""

from __future__ import annotations

import functools
import re
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from django.core import signing
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from accounts.models import Membership, Team
from assistant import services
from assistant.errors import BudgetExceeded
from assistant.models import Conversation, Repository, Run, ToolCall
from config.rows import Rows, column, prepared, table

from . import data
from .http import ApiError, Caller, endpoint, error_response, json_body, not_found, team_param
from .openapi import schema

DEFAULT_LIMIT = 50
MAX_LIMIT = 100


@endpoint("GET")
def me(request: HttpRequest, caller: Caller) -> JsonResponse:
    if caller.key is not None:
        key = caller.key
        teams = [data.team_data(key.team, caller.key_role)]
        key_data = {
            "id": str(key.uuid),
            "name": key.name,
            "prefix": key.prefix,
            "scope": key.scope,
            "expires": data.iso(key.expires),
        }
    else:
        memberships = Membership.objects.filter(user=caller.user).select_related("team")
        teams = [data.team_data(m.team, m.role) for m in memberships.order_by("team__name")]
        key_data = None
    return JsonResponse(
        {
            "user": data.user_data(caller.user),
            "team": teams[0] if caller.key is not None else None,
            "teams": teams,
            "key": key_data,
        }
    )


# --- Conversations -------------------------------------------------------------------------------


def _page_size(request: HttpRequest) -> int:
    raw = request.GET.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_parameter", f"limit is a whole number from 1 to {MAX_LIMIT}.")
    return int(raw)


CURSOR_SALT = "api.v1.conversations.cursor"


def _cursor_for(conversation: Conversation) -> str:
    # Signed, so a client can't hand-craft positions; opaque, so its form can change.
    return signing.dumps([conversation.updated.isoformat(), conversation.pk], salt=CURSOR_SALT)


def _after_cursor(raw: str) -> Q:
    try:
        updated, pk = signing.loads(raw, salt=CURSOR_SALT)
        updated = datetime.fromisoformat(updated)
        pk = int(pk)
    except (signing.BadSignature, ValueError, TypeError):
        raise ApiError(400, "invalid_cursor", "This cursor is not one the API gave out.")
    return Q(updated__lt=updated) | Q(updated=updated, pk__lt=pk)


@endpoint("GET", "POST")
def conversations(request: HttpRequest, caller: Caller) -> JsonResponse:
    if request.method == "POST":
        return _conversation_create(request, caller)
    membership = caller.membership(team_param(request), required=True)
    limit = _page_size(request)
    query = request.GET.get("q", "")
    if len(query) > 200:
        raise ApiError(400, "invalid_parameter", "q can have at most 200 characters.")
    query = query.replace("\x00", "").strip()  # PostgreSQL can't compare with NUL
    found = (
        Conversation.objects.filter(team=membership.team)
        .select_related("team", "created_by", "workspace__repository")
        .order_by("-updated", "-pk")
    )
    if query:
        found = found.filter(title__icontains=query)
    cursor = request.GET.get("cursor")
    if cursor:
        found = found.filter(_after_cursor(cursor))
    page = list(found[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return JsonResponse(
        {
            "data": [data.conversation_data(c) for c in page],
            "next": _cursor_for(page[-1]) if more else None,
        }
    )


def _text_field(body: dict[str, Any], name: str, *, max_chars: int) -> str:
    value: str = body.get(name, "")
    if "\x00" in value:
        raise ApiError(422, "invalid_field", f"“{name}” contains a NUL character.")
    if len(value) > max_chars:
        raise ApiError(422, "invalid_field", f"“{name}” can have at most {max_chars} characters.")
    return value.strip()


def _repository(team: Team, ref: str) -> Repository:
    """A repository of the team, by id or by name."""
    found = Repository.objects.filter(team=team)
    try:
        by_id = found.filter(uuid=uuid.UUID(ref)).first()
    except ValueError:
        by_id = None
    repo = by_id or found.filter(name=ref).first()
    if repo is None:
        raise ApiError(422, "unknown_repository", "The team has no such repository.")
    return repo


def _conversation_create(request: HttpRequest, caller: Caller) -> JsonResponse:
    body = json_body(request, {"title": str, "repository": str, "branch": str})
    title = _text_field(body, "title", max_chars=200)
    repository = _text_field(body, "repository", max_chars=100)
    branch = _text_field(body, "branch", max_chars=255)
    if branch and not repository:
        raise ApiError(422, "invalid_field", "A branch needs a repository.")
    membership = caller.membership(team_param(request), required=True)
    repo = _repository(membership.team, repository) if repository else None
    # One transaction: a repository that can't be attached leaves no conversation behind.
    with transaction.atomic():
        conversation = services.conversation_create(
            team=membership.team, author=caller.user, title=title
        )
        if repo is not None:
            # A worker clones it (repository.status "preparing", then "ready" or "failed" with
            # its error); a message sent meanwhile waits for it.
            services.workspace_attach(
                conversation=conversation, repo=repo, branch=branch, user=caller.user
            )
    conversation = _conversations(caller, None).get(pk=conversation.pk)
    return JsonResponse(data.conversation_data(conversation), status=201)


def _conversations(caller: Caller, team_slug: str | None) -> QuerySet[Conversation]:
    from django.db.models import Prefetch

    from assistant.models import RepoJob, RepoJobKind

    # Each one's workspace being prepared (or failed), in one query for a whole page.
    attaching = (
        RepoJob.objects.filter(kind=RepoJobKind.ATTACH)
        .select_related("repository")
        .defer("patch")
        .order_by("-created")
    )
    return (
        Conversation.objects.filter(caller.in_teams("", team_slug))
        .select_related("team", "created_by", "workspace__repository")
        .prefetch_related(Prefetch("repo_jobs", queryset=attaching, to_attr="attach_jobs"))
    )


def _conversation(request: HttpRequest, caller: Caller, conversation_id: uuid.UUID) -> Conversation:
    conversation = _conversations(caller, team_param(request)).filter(uuid=conversation_id).first()
    if conversation is None:
        raise not_found("The conversation")
    return conversation


@endpoint("GET", "DELETE")
def conversation(request: HttpRequest, caller: Caller, conversation_id: uuid.UUID) -> HttpResponse:
    found = _conversation(request, caller, conversation_id)
    if request.method == "DELETE":
        services.conversation_delete(conversation=found)
        return HttpResponse(status=204)
    messages = found.messages.select_related("author").order_by("created", "id")
    runs = found.runs.select_related("conversation", "user_message", "assistant_message")
    return JsonResponse(
        {
            **data.conversation_data(found),
            "messages": [data.message_data(m) for m in messages],
            "runs": [data.run_data(r) for r in runs.order_by("created", "id")],
        }
    )


@endpoint("GET")
def conversation_export(
    request: HttpRequest, caller: Caller, conversation_id: uuid.UUID
) -> HttpResponse:
    """The conversation as a Markdown or JSON document (the same as the page's Export), with
    the team's secrets and common token patterns redacted."""
    from sharing import export

    found = _conversation(request, caller, conversation_id)
    kind = request.GET.get("format", "markdown")
    if kind not in ("markdown", "json"):
        raise ApiError(400, "invalid_parameter", "format is markdown or json.")
    if kind == "json":
        return JsonResponse(export.export_data(found))
    response = HttpResponse(export.to_markdown(found), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="conversation-{found.uuid}.md"'
    return response


class _SendTo:
    """The conversation a message is sent to, with its team, if the caller may see it — what
    ``Conversation.objects.filter(caller.in_teams(…)).select_related("team")`` finds, written
    out (config/rows.py): the ORM spent ~0.6 ms of CPU building it for every message sent."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.rows = Rows(connection, (Conversation, "c"), (Team, "t"))

        col, tab = functools.partial(column, connection), functools.partial(table, connection)

        self.select = (
            f"SELECT {self.rows.columns} FROM {tab(Conversation)} c"  # noqa: S608 (the models' names)
            f" JOIN {tab(Team)} t ON t.{col(Team, 'id')} = c.{col(Conversation, 'team')}"
            f" WHERE c.{col(Conversation, 'uuid')} = %s"
        )
        self.in_key_team = f" AND c.{col(Conversation, 'team')} = %s"
        self.member = (
            f" AND EXISTS (SELECT 1 FROM {tab(Membership)} m"  # noqa: S608 (the same)
            f" WHERE m.{col(Membership, 'team')} = c.{col(Conversation, 'team')}"
            f" AND m.{col(Membership, 'user')} = %s)"
        )
        self.slug = f" AND t.{col(Team, 'slug')} = %s"
        # As UUIDField stores it: natively, or as 32 hex digits (SQLite).
        self.native_uuid = connection.features.has_native_uuid_field

    def find(
        self,
        connection: BaseDatabaseWrapper,
        caller: Caller,
        team_slug: str | None,
        conversation_id: uuid.UUID,
    ) -> Conversation | None:
        sql = self.select
        params: list[Any] = [conversation_id if self.native_uuid else conversation_id.hex]
        if caller.key is not None:  # as Caller.in_teams: the key's team
            sql += self.in_key_team
            params.append(caller.key.team_id)
        else:  # the person's teams, or the one ?team= names
            sql += self.member
            params.append(caller.user.pk)
            if team_slug:
                sql += self.slug
                params.append(team_slug)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        conversation, team = self.rows.load(connection, row)
        Conversation.team.field.set_cached_value(conversation, team)
        return cast(Conversation, conversation)


def _to_send_to(
    caller: Caller, team_slug: str | None, conversation_id: uuid.UUID
) -> Conversation | None:
    connection = connections[Conversation.objects.db]
    return prepared(_SendTo, connection).find(connection, caller, team_slug, conversation_id)


# Messages sent at once are served at most this many at a time in a process; the others wait
# their turn. Each request has a thread of its own (Django's ASGI handler), so without a gate
# 50 POSTs at once all progressed together, sharing the GIL and the pool's connections, and
# nearly all were answered near the end: the whole burst's CPU before most of them. A few at
# a time answers them in turn, while a few still overlap their database round trips: the
# median POST of 50 at once was answered after ~330 ms instead of ~530 (2 and 4 alike, 1
# worse: docs/benchmarks.md, issue 14).
SEND_GATE = threading.BoundedSemaphore(4)


@endpoint("POST", gate=SEND_GATE)
def messages(request: HttpRequest, caller: Caller, conversation_id: uuid.UUID) -> JsonResponse:
    # Only what sending needs (the team, for its budget): not the workspace, repository and
    # attach jobs _conversation reads for a conversation's JSON. One query less per message,
    # on the path to every reply's first word (docs/benchmarks.md, issue 14).
    found = _to_send_to(caller, team_param(request), conversation_id)
    if found is None:
        raise not_found("The conversation")
    body = json_body(request, {"content": str})
    if "content" not in body:
        raise ApiError(400, "missing_field", "“content” is required.")
    try:
        sent = services.message_send(
            conversation=found, author=caller.user, content=body["content"], api_key=caller.key
        )
    except BudgetExceeded as exc:  # a ChatError too, but no fault of the message
        raise ApiError(429, "budget_exceeded", str(exc))
    except services.RunInFlight as exc:
        raise ApiError(409, "run_in_flight", str(exc))
    except services.ChatError as exc:
        raise ApiError(422, "invalid_content", str(exc))
    return JsonResponse(
        {"message": data.message_data(sent.message), "run": data.run_data(sent.run)}, status=202
    )


# --- Runs and tool calls -----------------------------------------------------------------------


def _run(request: HttpRequest, caller: Caller, run_id: uuid.UUID) -> Run:
    run = (
        Run.objects.filter(caller.in_teams("conversation__", team_param(request)))
        .select_related("conversation__team", "user_message", "assistant_message")
        .filter(uuid=run_id)
        .first()
    )
    if run is None:
        raise not_found("The run")
    return run


@endpoint("GET")
def run(request: HttpRequest, caller: Caller, run_id: uuid.UUID) -> JsonResponse:
    return JsonResponse(data.run_detail_data(_run(request, caller, run_id)))


@endpoint("POST")
def run_cancel(request: HttpRequest, caller: Caller, run_id: uuid.UUID) -> JsonResponse:
    found = _run(request, caller, run_id)
    json_body(request, {})
    if found.is_finished:
        raise ApiError(409, "run_finished", f"This run has already {found.status}.")
    services.run_cancel(run=found)
    found.refresh_from_db()
    return JsonResponse(data.run_data(found), status=202)


DECISIONS = (services.Decision.APPROVE, services.Decision.DENY, services.Decision.ALWAYS)


@endpoint("POST")
def tool_call_decision(request: HttpRequest, caller: Caller, call_id: uuid.UUID) -> JsonResponse:
    call = (
        ToolCall.objects.filter(caller.in_teams("run__conversation__", team_param(request)))
        .select_related("run__conversation__team", "decided_by")
        .filter(uuid=call_id)
        .first()
    )
    if call is None:
        raise not_found("The tool call")
    body = json_body(request, {"decision": str})
    if body.get("decision") not in DECISIONS:
        raise ApiError(400, "invalid_field", "“decision” is approve, deny or always.")
    if caller.key is not None:
        is_admin = Membership(role=caller.key_role).is_admin
    else:
        is_admin = Membership.objects.get(
            team=call.run.conversation.team, user=caller.user
        ).is_admin
    if body["decision"] == services.Decision.ALWAYS and not is_admin:
        raise ApiError(403, "admins_only", "Only team admins can allow a command for good.")
    try:
        call = services.tool_call_decide(
            call=call, user=caller.user, decision=body["decision"], is_admin=is_admin
        )
    except services.ChatError as exc:
        raise ApiError(409, "conflict", str(exc))
    return JsonResponse(data.tool_call_data(call))


# --- Schema, docs, unknown URLs ------------------------------------------------------------------


def public(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A page anyone may GET. Other methods get the API's JSON 405, not Django's HTML one;
    CSRF-exempt because it changes nothing (else an unsafe method meets the HTML 403)."""

    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here.",
                {"Allow": "GET, HEAD"},
            )
        return view(request, *args, **kwargs)

    return wrapper


@public
def openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(schema(), json_dumps_params={"indent": 1})


@public
def docs(request: HttpRequest) -> HttpResponse:
    return render(request, "api/docs.html")


@csrf_exempt  # a JSON 404 for every method, never the HTML CSRF page
def unknown(request: HttpRequest, rest: str = "") -> JsonResponse:
    return error_response(404, "not_found", "There is no such API endpoint.")
