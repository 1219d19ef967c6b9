"""What the API says about each object (the shapes in api/openapi.py)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django.db.models import Sum

from accounts.models import Team, User
from assistant import events, streams
from assistant.models import Conversation, Message, RepoJob, RepoJobKind, Run, RunStatus, ToolCall
from usage.models import UsageRecord


def iso(value: datetime | date | None) -> str | None:
    return value.isoformat() if value else None


def user_data(user: User) -> dict[str, Any]:
    return {"id": str(user.uuid), "email": user.email, "name": user.name}


def team_data(team: Team, role: str) -> dict[str, Any]:
    return {"id": str(team.uuid), "slug": team.slug, "name": team.name, "role": role}


def conversation_data(conversation: Conversation) -> dict[str, Any]:
    workspace = getattr(conversation, "workspace", None)
    repository = None
    if workspace is not None:
        repository = {
            "id": str(workspace.repository.uuid),
            "name": workspace.repository.name,
            "branch": workspace.branch,
            "work_branch": workspace.work_branch,
            "status": "ready",
            "error": "",
        }
    elif attach := _latest_attach(conversation):
        # Being prepared by a worker, or failed (then "error" says why, in words).
        repository = {
            "id": str(attach.repository.uuid),
            "name": attach.repository.name,
            "branch": attach.branch,
            "work_branch": "",
            "status": "preparing" if attach.pending else "failed",
            "error": attach.error,
        }
    return {
        "id": str(conversation.uuid),
        "team": conversation.team.slug,
        "title": conversation.display_title,
        "created": iso(conversation.created),
        "updated": iso(conversation.updated),
        "created_by": conversation.created_by.name if conversation.created_by else None,
        "repository": repository,
    }


def _latest_attach(conversation: Conversation) -> RepoJob | None:
    prefetched = getattr(conversation, "attach_jobs", None)  # api.views._conversations
    if prefetched is not None:
        return prefetched[0] if prefetched else None
    jobs = conversation.repo_jobs.filter(kind=RepoJobKind.ATTACH).select_related("repository")
    return jobs.defer("patch").order_by("-created").first()


def message_data(message: Message) -> dict[str, Any]:
    # The same shape as in the event stream's message.created.
    return events.message_data(message)


def run_data(run: Run) -> dict[str, Any]:
    assistant_message = getattr(run, "assistant_message", None)
    return {
        "id": str(run.uuid),
        "conversation": str(run.conversation.uuid),
        "status": run.status,
        "error": run.error,
        "model": run.model,
        "user_message": str(run.user_message.uuid),
        "message": str(assistant_message.uuid) if assistant_message else None,
        "created": iso(run.created),
        "started": iso(run.started),
        "finished": iso(run.finished),
    }


def tool_call_data(call: ToolCall) -> dict[str, Any]:
    data = events.tool_call_data(call)
    data["created"] = iso(call.created)
    return data


def in_flight_text(run: Run) -> tuple[int, str]:
    """(last delta number, text so far) of a run that hasn't finished. A parked run keeps them
    in the database; a running one in the shared stream state."""
    if run.status in (RunStatus.WAITING, RunStatus.QUEUED):
        return run.seq, run.text
    snap = streams.snapshot_sync(str(run.uuid))
    return snap.seq, snap.text


def run_detail_data(run: Run) -> dict[str, Any]:
    usage = UsageRecord.objects.filter(run=run).aggregate(
        prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens")
    )
    calls = ToolCall.objects.filter(run=run).select_related("run", "decided_by")
    data = run_data(run)
    data["usage"] = {
        "prompt_tokens": usage["prompt_tokens"] or 0,
        "completion_tokens": usage["completion_tokens"] or 0,
    }
    data["tool_calls"] = [tool_call_data(call) for call in calls]
    if run.is_finished:
        data["seq"], data["text"] = None, None
    else:
        data["seq"], data["text"] = in_flight_text(run)
    return data
