"""The only module that talks to the channel layer.

Every event about a conversation goes to the group ``conversation.<uuid>``. Events carry data,
not HTML; the consumer renders them for the browser. Deltas have their own small message type so
the consumer can forward them without touching the ORM or the template engine.

Event types: message.created, run.started, delta, run.completed, run.failed, run.cancelled,
conversation.renamed, conversation.deleted, presence.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .models import Conversation, Message, Run


def group_name(conversation_id: str) -> str:
    return f"conversation.{conversation_id}"


def member_group(team_id: int, user_id: int) -> str:
    """Every socket one person has open on one team's conversations, to close them all when
    the person leaves or is removed from the team."""
    return f"member.{team_id}.{user_id}"


def membership_ended_on_commit(team_id: int, user_id: int) -> None:
    def send() -> None:
        layer = get_channel_layer()
        async_to_sync(layer.group_send)(
            member_group(team_id, user_id), {"type": "membership.ended"}
        )

    transaction.on_commit(send)


def message_data(message: Message) -> dict[str, Any]:
    author = message.author
    return {
        "id": str(message.uuid),
        "role": message.role,
        "author": author.name if author else None,
        "content": message.content,
        "created": message.created.isoformat(),
    }


def run_data(run: Run) -> dict[str, Any]:
    return {"id": str(run.uuid), "status": run.status, "error": run.error}


async def publish(conversation_id: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    await layer.group_send(group_name(conversation_id), {"type": "conv.event", "event": event})


async def publish_delta(conversation_id: str, run_id: str, seq: int, text: str) -> None:
    layer = get_channel_layer()
    await layer.group_send(
        group_name(conversation_id), {"type": "conv.delta", "run": run_id, "seq": seq, "text": text}
    )


def publish_sync(conversation_id: str, event: dict[str, Any]) -> None:
    """For rare events from sync code (views, services). Inside Daphne's worker threads
    async_to_sync runs this on the server's own loop, which the in-memory layer requires."""
    async_to_sync(publish)(conversation_id, event)


def publish_on_commit(conversation_id: str, event: dict[str, Any]) -> None:
    transaction.on_commit(lambda: publish_sync(conversation_id, event))


def message_created(message: Message, run: Run | None) -> dict[str, Any]:
    return {
        "t": "message.created",
        "message": message_data(message),
        "run": run_data(run) if run else None,
    }


def conversation_renamed(conversation: Conversation) -> dict[str, Any]:
    return {"t": "conversation.renamed", "title": conversation.display_title}
