"""More /api/v1/ endpoints (issue 18, for the command-line client): approvals waiting, share
links, a conversation's diff and patch, undoing a turn, and where the team stands on usage;
(issue 16) pushing with a commit message and opening a pull request.

Thin, like api/views.py: the caller is admitted by ``endpoint`` (key or session, scope, rate
limits), objects are looked up through the caller's teams (404 for outsiders), and the work
is done by the services the web pages use.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import (
    HttpRequest,
    HttpResponseBase,
    JsonResponse,
)
from django.urls import reverse
from django.utils import timezone

from assistant import repo_views, services
from assistant.models import (
    Conversation,
    RepoJob,
    RepoJobKind,
    ToolCall,
    ToolCallStatus,
    Workspace,
)

from . import data
from .http import ApiError, Caller, endpoint, json_body, not_found, team_param
from .views import _conversation, _run

MAX_APPROVALS = 100


# --- Approvals -----------------------------------------------------------------------------------


@endpoint("GET")
def approvals(request: HttpRequest, caller: Caller) -> JsonResponse:
    """Commands waiting for a member's decision, oldest first, in the caller's teams (or the
    one named by ``?team=``: 404 for a team the caller isn't in)."""
    slug = team_param(request)
    caller.membership(slug, required=False)
    calls = (
        ToolCall.objects.filter(caller.in_teams("run__conversation__", slug))
        .filter(status=ToolCallStatus.AWAITING)
        .select_related("run__conversation__team", "decided_by")
        .order_by("created", "id")[:MAX_APPROVALS]
    )
    return JsonResponse({"data": [approval_data(call) for call in calls]})


def approval_data(call: ToolCall) -> dict[str, Any]:
    conversation = call.run.conversation
    return {
        **data.tool_call_data(call),
        "conversation": str(conversation.uuid),
        "conversation_title": conversation.display_title,
        "team": conversation.team.slug,
    }


# --- Share links ---------------------------------------------------------------------------------


@endpoint("POST")
def shares(request: HttpRequest, caller: Caller, conversation_id: uuid.UUID) -> JsonResponse:
    from sharing import services as sharing

    found = _conversation(request, caller, conversation_id)
    body = json_body(request, {"audience": str, "mode": str, "expiry": str})
    try:
        created = sharing.create_link(
            conversation=found,
            user=caller.user,
            audience=body.get("audience", "team"),
            mode=body.get("mode", "snapshot"),
            expiry=body.get("expiry", "7d"),
        )
    except sharing.ShareError as exc:
        raise ApiError(422, "invalid_share", str(exc))
    link = created.link
    return JsonResponse(
        {
            "id": str(link.uuid),
            "url": request.build_absolute_uri(reverse("share_view", args=[created.token])),
            "audience": link.audience,
            "mode": link.mode,
            "expires": data.iso(link.expires_at),
            "created": data.iso(link.created),
        },
        status=201,
    )


# --- The workspace: diff, patch, undo ------------------------------------------------------------


def _workspace(conversation: Conversation) -> Workspace:
    workspace: Workspace | None = getattr(conversation, "workspace", None)
    if workspace is None:
        raise ApiError(409, "no_repository", "This conversation has no repository.")
    return workspace


@endpoint("GET")
def conversation_diff(
    request: HttpRequest, caller: Caller, conversation_id: uuid.UUID
) -> JsonResponse:
    """Each finished turn's changes, as the conversation page shows them: the diffs the worker
    stored (assistant/diffs.py), bounded; no git runs here. A turn whose diff isn't stored
    yet is asked for (``pending``)."""
    from assistant import jobs
    from assistant.models import RunDiff

    found = _conversation(request, caller, conversation_id)
    _workspace(found)
    runs = found.runs.filter(status__in=("succeeded", "failed", "cancelled")).order_by(
        "created", "id"
    )
    stored = {d.run_id: d for d in RunDiff.objects.filter(run__in=runs)}
    turns = []
    for run in runs:
        if not run.changed_files:
            continue
        diff = stored.get(run.pk)
        if diff is None:
            jobs.record_diff_soon(run)
        turns.append(
            {
                "run": str(run.uuid),
                "pending": diff is None,
                "undone": run.undone_at is not None,
                "added": diff.added if diff else 0,
                "deleted": diff.deleted if diff else 0,
                "files": [
                    {k: f.get(k) for k in ("path", "old_path", "status", "added", "deleted")}
                    for f in (diff.files if diff else [])
                ],
                "files_total": diff.files_total if diff else 0,
                "text": diff.text if diff else "",
                "clipped": diff.clipped if diff else False,
                "error": diff.error if diff else "",
            }
        )
    return JsonResponse({"data": turns})


@endpoint("GET")
def conversation_patch(
    request: HttpRequest, caller: Caller, conversation_id: uuid.UUID
) -> HttpResponseBase:
    """Everything the conversation changed, for `git apply` on its base commit — the page's
    Download patch: written by a worker into the database, cut (saying so) at PATCH_MAX_BYTES.
    202 ``{"status": "preparing"}`` with Retry-After until it is there: ask again."""
    from assistant.models import RepoJobStatus

    found = _conversation(request, caller, conversation_id)
    workspace = _workspace(found)
    try:
        job = services.workspace_patch(
            conversation=found, user=caller.user, again=bool(request.GET.get("again"))
        )
    except services.ChatError as exc:
        code = "no_changes" if "not changed" in str(exc) else "conflict"
        raise ApiError(409, code, str(exc))
    if job.pending:
        waiting = JsonResponse({"status": "preparing", "job": str(job.uuid)}, status=202)
        waiting["Retry-After"] = "1"
        return waiting
    if job.status == RepoJobStatus.FAILED:
        raise ApiError(409, "repository_error", job.error)
    size = repo_views.patch_length(job.pk)
    if not size:
        raise ApiError(409, "no_changes", "This conversation has not changed any files yet.")
    name = f"tandem-{workspace.repository.name}-{found.uuid.hex[:8]}.patch"
    return repo_views.patch_response(request, job.pk, size, name)


@endpoint("POST")
def run_undo(request: HttpRequest, caller: Caller, run_id: uuid.UUID) -> JsonResponse:
    """Ask the worker to revert the files one turn changed (the page's Undo); the event
    stream says run.updated when it is done."""
    found = _run(request, caller, run_id)
    json_body(request, {})
    try:
        found = services.run_undo(run=found, user=caller.user)
    except services.ChatError as exc:
        raise ApiError(409, "conflict", str(exc))
    return JsonResponse(data.run_data(found), status=202)


# --- Push and pull request ----------------------------------------------------------------------


def _job_data(job: RepoJob) -> dict[str, Any]:
    pull_request = None
    if job.kind == RepoJobKind.PULL_REQUEST and job.number is not None:
        pull_request = {
            "number": job.number,
            "url": job.url,
            "existing": job.result == "existing",
        }
    return {
        "id": str(job.uuid),
        "kind": job.kind,
        "status": job.status,
        "error": job.error,
        "branch": job.branch,
        "commit": job.result if job.kind == RepoJobKind.PUSH and job.result else None,
        "base": job.base if job.kind == RepoJobKind.PULL_REQUEST else None,
        "pull_request": pull_request,
        "created": data.iso(job.created),
        "finished": data.iso(job.finished),
    }


def _job_refused(exc: services.ChatError) -> ApiError:
    from assistant import pushes

    if isinstance(exc, pushes.Invalid):
        return ApiError(422, "invalid_field", str(exc))
    return ApiError(409, "conflict", str(exc))


@endpoint("POST")
def conversation_push(
    request: HttpRequest, caller: Caller, conversation_id: uuid.UUID
) -> JsonResponse:
    """The page's Push: commit the conversation's changes as the caller with ``message`` (the
    proposed one when left out) and push them to a new branch (never forced), in a worker.
    Follow the job with GET /jobs/{id}."""
    found = _conversation(request, caller, conversation_id)
    workspace = _workspace(found)
    body = json_body(request, {"branch": str, "message": str})
    branch = body.get("branch", "").strip() or workspace.work_branch
    if len(branch) > 255:
        raise ApiError(422, "invalid_field", "A branch name has at most 255 characters.")
    try:
        job = services.workspace_push(
            conversation=found, branch=branch, user=caller.user, message=body.get("message")
        )
    except services.ChatError as exc:
        raise _job_refused(exc)
    return JsonResponse(_job_data(job), status=202)


@endpoint("POST")
def conversation_pull_request(
    request: HttpRequest, caller: Caller, conversation_id: uuid.UUID
) -> JsonResponse:
    """The page's Open pull request, from the branch of the last push that worked: one
    already open for that branch is linked instead. Title, description and base default to
    what the page proposes. Follow the job with GET /jobs/{id}."""
    from assistant import pushes

    found = _conversation(request, caller, conversation_id)
    workspace = _workspace(found)
    body = json_body(request, {"title": str, "body": str, "base": str})
    pushed = services.last_push(found)
    proposed = pushes.pull_request_defaults(pushed, workspace) if pushed else {}
    try:
        job = services.pull_request_open(
            conversation=found,
            user=caller.user,
            title=body.get("title", proposed.get("title", "")),
            body=body.get("body", proposed.get("body", "")),
            base=body.get("base", proposed.get("base", "")),
        )
    except services.ChatError as exc:
        raise _job_refused(exc)
    return JsonResponse(_job_data(job), status=202)


@endpoint("GET")
def job(request: HttpRequest, caller: Caller, job_id: uuid.UUID) -> JsonResponse:
    """A push or pull request job: queued, running, done (with the commit, or the pull
    request's number and URL) or failed (why, in words)."""
    found = (
        RepoJob.objects.filter(
            caller.in_teams("conversation__", team_param(request)),
            uuid=job_id,
            kind__in=(RepoJobKind.PUSH, RepoJobKind.PULL_REQUEST),
        )
        .defer("patch")
        .first()
    )
    if found is None:
        raise not_found("The job")
    return JsonResponse(_job_data(found))


# --- Usage ---------------------------------------------------------------------------------------


@endpoint("GET")
def usage(request: HttpRequest, caller: Caller) -> JsonResponse:
    """The team's spending this month against its budget, and the caller's tokens today
    against the member limit (the figures the page's banner and the budget check use)."""
    from usage import budgets
    from usage.dashboard import month_spent_by_team

    membership = caller.membership(team_param(request), required=True)
    team = membership.team
    now = timezone.now()
    spent = month_spent_by_team([team.pk], now).get(team.pk, 0)
    status = budgets.status(team.pk, caller.user.pk, now)
    tokens_today = budgets.db_member_tokens(team.pk, caller.user.pk, now)
    if status.tokens_today is not None:
        tokens_today = max(tokens_today, status.tokens_today)  # holds of calls in flight
    budget = team.monthly_budget_usd
    return JsonResponse(
        {
            "team": team.slug,
            "month": f"{now:%Y-%m}",
            "budget_usd": float(budget) if budget is not None else None,
            "spent_usd": float(spent),
            "budget_percent": status.budget_percent,
            "daily_tokens": team.member_daily_tokens,
            "tokens_today": tokens_today,
            "refusal": status.refusal(),
        }
    )
