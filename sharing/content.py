"""What a share shows of its conversation, as the assistant templates' contexts.

One place decides visibility for the shared page, its live fragments, the viewer's WebSocket,
exports and forks: the history up to ``until`` (a snapshot's moment), every string redacted,
and for public links no member's identity beyond the names they chose to show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from assistant import streams
from assistant.models import Conversation, Message, Role, Run, RunStatus, Workspace
from assistant.rendering import run_changes, run_context

from . import redact as redaction

# Context keys that are identifiers or states, never text to redact.
_KEEP = frozenset({"id", "run", "status", "seq", "role", "approval", "changes"})
IN_FLIGHT = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING)
UNFINISHED_AT_SNAPSHOT = "_This reply was still being written when the link was shared._"


@dataclass(frozen=True)
class Lens:
    """How a conversation is seen: up to when, redacted how, and whether by the public."""

    until: datetime | None
    redact: Callable[[str], str]
    public: bool


def lens_for_link(link) -> Lens:
    team = link.conversation.team
    return Lens(
        until=link.until,
        redact=redaction.for_team(team, hide_member_emails=link.is_public),
        public=link.is_public,
    )


def author_name(user, *, public: bool) -> str | None:
    """A person as a share names them. Public viewers get only a name the person chose
    (display or full name); ``User.name`` would fall back to the address's local part."""
    if user is None:
        return None
    if not public:
        return user.name
    return user.display_name or user.get_full_name() or "Team member"


def turns(conversation: Conversation, lens: Lens, *, changes: bool = True) -> list[dict]:
    """User messages, each with the runs that answer it, as far as the lens sees."""
    messages = conversation.messages.filter(role=Role.USER).select_related("author")
    runs = (
        conversation.runs.select_related("assistant_message", "undone_by", "diff")
        .prefetch_related("tool_calls__decided_by", "tool_calls__run")
        .order_by("created", "id")
    )
    if lens.until is not None:
        messages = messages.filter(created__lte=lens.until)
        runs = runs.filter(created__lte=lens.until)
    out: list[dict] = []
    by_message: dict[int, dict] = {}
    for message in messages:
        turn: dict[str, Any] = {"message": message_view(message, lens), "runs": []}
        out.append(turn)
        by_message[message.pk] = turn
    workspace = workspace_of(conversation) if changes else None
    for run in runs:
        answered = by_message.get(run.user_message_id)
        if answered is not None:
            answered["runs"].append(run_view(run, lens, workspace=workspace))
    return out


def turn_view(message: Message, lens: Lens) -> dict:
    """One user message with its runs (for a live viewer when a message arrives)."""
    runs = (
        message.runs.select_related("assistant_message", "undone_by", "diff")
        .prefetch_related("tool_calls__decided_by", "tool_calls__run")
        .order_by("created", "id")
    )
    return {"message": message_view(message, lens), "runs": [run_view(r, lens) for r in runs]}


def message_view(message: Message, lens: Lens) -> dict[str, Any]:
    return {
        "id": str(message.uuid),
        "role": message.role,
        "author": author_name(message.author, public=lens.public),
        "content": lens.redact(message.content),
        "created": message.created,
    }


def run_view(run: Run, lens: Lens, *, workspace: Workspace | None = None) -> dict[str, Any]:
    """A run bubble's context. A run still going at a snapshot's moment shows only a note: what
    it wrote by then was never saved, and what it wrote later is past the snapshot."""
    if lens.until is not None and (run.finished is None or run.finished > lens.until):
        return {
            "id": str(run.uuid),
            "status": "unfinished",
            "error": "",
            "model": "",
            "message": None,
            "text": UNFINISHED_AT_SNAPSHOT,
            "seq": 0,
            "segments": [{"text": UNFINISHED_AT_SNAPSHOT}],
            "changes": None,
        }
    snap = None
    if run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
        snap = streams.snapshot_sync(str(run.uuid))
    context = run_context(run, snap.text if snap else "", snap.seq if snap else 0)
    # Undo is the team's business (and its error names files): not on a shared page.
    context["undo_pending"], context["undo_error"] = False, ""
    # Names of who approved a command: the lens decides how a person is named.
    people = {str(call.uuid): call.decided_by for call in run.tool_calls.all()}
    for part in context["segments"]:
        call = part.get("call")
        if call is not None:
            call["decided_by"] = author_name(people.get(call["id"]), public=lens.public)
            call.pop("run", None)
    if lens.public:
        # The team's model choice and the provider's error wording (which may name internal
        # hosts) are the team's settings, not the conversation.
        context["model"] = ""
        context["error"] = ""
    for part in context["segments"]:
        call = part.get("call")
        if call is not None:
            # Redacted as decoded values, before the JSON text's escapes can hide a secret.
            call["arguments"] = redaction.json_text(call["arguments"] or "", lens.redact)
            call["arguments_pretty"] = redaction.json_text(
                call["arguments_pretty"] or "", lens.redact, indent=2
            )
    context = redaction.deep(context, lens.redact, skip=_KEEP)
    if run.status in IN_FLIGHT:
        # Held back: the end of a growing text may be the first half of a secret.
        pieces = context["segments"]
        if pieces and "text" in pieces[-1]:
            pieces[-1]["text"] = redaction.stable(pieces[-1]["text"])
        context["text"] = redaction.stable(context["text"])
    context["changes"] = None
    if workspace is not None and run.is_finished:
        context["changes"] = _changes(run, workspace, lens)
    return context


def live_text(raw: str, lens: Lens) -> str:
    """What a live viewer may see of a run's text so far."""
    return redaction.stable(lens.redact(raw))


class LiveText:
    """live_text for one text that only grows, as a live viewer's socket sees it: redacting
    all of it again for every delta would cost milliseconds per delta on a long reply, so
    whole lines well behind the end are redacted once and kept. Patterns don't span lines
    (a private key block that is still open is never cut)."""

    WINDOW = 2000  # characters behind the end that are always redacted afresh

    def __init__(self, lens: Lens) -> None:
        self.lens = lens
        self.cut = 0  # raw[:cut] is done: its redacted form is self.done
        self.done = ""

    def __call__(self, raw: str) -> str:
        limit = len(raw) - self.WINDOW
        if limit > self.cut:
            newline = raw.rfind("\n", self.cut, limit)
            if newline != -1:
                chunk = raw[self.cut : newline + 1]
                if not redaction.opens_key_block(chunk):
                    self.done += self.lens.redact(chunk)
                    self.cut = newline + 1
        return self.done + redaction.stable(self.lens.redact(raw[self.cut :]))


def workspace_of(conversation: Conversation) -> Workspace | None:
    return Workspace.objects.filter(conversation=conversation).select_related("repository").first()


def _changes(run: Run, workspace: Workspace, lens: Lens) -> dict[str, Any] | None:
    """The turn's diff as the conversation shows it, redacted, with undo as of the share."""
    changes = run_changes(run, workspace, redact=lens.redact)
    if changes is None:
        return None
    if "error" in changes:
        # The error names paths on the server: say less.
        return {"error": "the repository is not available."}
    undone = run.undone_by_id is not None and (
        lens.until is None or (run.undone_at is not None and run.undone_at <= lens.until)
    )
    changes["undone_by"] = author_name(run.undone_by, public=lens.public) if undone else None
    changes["undone_at"] = run.undone_at if undone else None
    return changes
