"""Permission-scoped reads of conversations and runs: anything outside the member's team is 404."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet, Value
from django.db.models.functions import Greatest, StrIndex, Substr, Upper
from django.shortcuts import get_object_or_404

from accounts.models import Membership, Team

from .models import Conversation, Message, Role, Run, ToolCall, ToolCallStatus, Workspace


def conversations_of(team: Team, *, query: str = "") -> QuerySet[Conversation]:
    conversations = team.conversations.order_by("-updated", "-id")
    if query:
        conversations = conversations.filter(title__icontains=query)
    return conversations


def conversation_for(membership: Membership, conversation_id) -> Conversation:
    return get_object_or_404(
        Conversation.objects.select_related("team"), uuid=conversation_id, team=membership.team
    )


def run_for_user(user, run_id) -> Run:
    return get_object_or_404(
        Run.objects.select_related("conversation"),
        uuid=run_id,
        conversation__team__memberships__user=user,
    )


def user_messages_of(conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.filter(role=Role.USER).select_related("author")


def runs_of(conversation: Conversation) -> QuerySet[Run]:
    return (
        conversation.runs.select_related("assistant_message", "undone_by", "diff")
        .prefetch_related("tool_calls__decided_by")
        .order_by("created", "id")
    )


def workspace_of(conversation: Conversation) -> Workspace | None:
    # Its paths (up to file_links.MAX_PATHS) are read only by what links them, when it does.
    return (
        Workspace.objects.filter(conversation=conversation)
        .select_related("repository")
        .defer("paths")
        .first()
    )


def tool_call_for_user(user, call_id) -> tuple[ToolCall, Membership]:
    """A tool call of a conversation in one of the user's teams, with the user's membership
    there (approving is for members; "always allow" for admins)."""
    call = get_object_or_404(
        ToolCall.objects.select_related("run__conversation__team", "decided_by"),
        uuid=call_id,
        run__conversation__team__memberships__user=user,
    )
    membership = Membership.objects.get(team=call.run.conversation.team, user=user)
    return call, membership


def untouched_conversation_of(team, author) -> Conversation | None:
    """The author's newest conversation in the team with no title and no message yet: New
    conversation opens it again rather than piling up empty ones."""
    return (
        Conversation.objects.filter(team=team, created_by=author, title="", messages__isnull=True)
        .order_by("-created")
        .first()
    )


def awaiting_calls_of(team: Team) -> QuerySet[ToolCall]:
    """Every command in the team's conversations waiting for a member's decision, oldest first
    (the one waiting longest is answered first)."""
    return (
        ToolCall.objects.filter(status=ToolCallStatus.AWAITING, run__conversation__team=team)
        .select_related("run__conversation", "run__requested_by", "decided_by")
        .order_by("created", "id")
    )


def awaiting_count_of(team: Team) -> int:
    """How many commands wait for approval in the team: the nav's badge (a partial index on
    ToolCall.status keeps this a small lookup however many calls the team has made)."""
    return ToolCall.objects.filter(
        status=ToolCallStatus.AWAITING, run__conversation__team=team
    ).count()


# Message search, bounded: at most this many matching messages are looked at (newest first),
# each read as a short window around the match, never whole; queries shorter than the
# trigram index's three letters search titles only.
SEARCH_MESSAGES_SCANNED = 200
SEARCH_MIN_BODY_QUERY = 3
SNIPPET_BEFORE = 50
SNIPPET_LENGTH = 150


@dataclass(frozen=True)
class Found:
    conversation: Conversation
    # A window of the newest matching message, split around the match ("" when only the title
    # matched).
    before: str = ""
    match: str = ""
    after: str = ""


def search_conversations(team: Team, query: str, *, limit: int) -> list[Found]:
    """The team's conversations whose title or any message has ``query`` in it (case aside),
    newest first, with a snippet of the newest matching message."""
    snippets: dict[int, tuple[str, str, str]] = {}
    if len(query) >= SEARCH_MIN_BODY_QUERY:
        start = Greatest(StrIndex(Upper("content"), Upper(Value(query))) - SNIPPET_BEFORE, Value(1))
        windows = (
            Message.objects.filter(conversation__team=team, content__icontains=query)
            .annotate(window=Substr("content", start, SNIPPET_LENGTH))
            .order_by("-created", "-id")
            .values_list("conversation_id", "window")[:SEARCH_MESSAGES_SCANNED]
        )
        for conversation_id, window in windows:
            if conversation_id not in snippets:
                snippets[conversation_id] = _split_around(window, query)
    conversations = conversations_of(team).filter(
        Q(title__icontains=query) | Q(pk__in=list(snippets))
    )[:limit]
    return [Found(c, *snippets.get(c.pk, ("", "", ""))) for c in conversations]


def _split_around(window: str, query: str) -> tuple[str, str, str]:
    at = window.lower().find(query.lower())
    if at < 0:  # case mapping changed the length (ß, İ): show the window as it is
        return (window, "", "")
    end = at + len(query)
    return (window[:at], window[at:end], window[end:])
