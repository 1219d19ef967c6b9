"""The conversation WebSocket: server-to-client push of a conversation's events.

On connect (members only) the client first gets the text so far of every run in flight, then
newer deltas; each delta has a sequence number, so the client drops what it already has and asks
for a fresh snapshot when it sees a gap (pub/sub is at-most-once). Browser frames are JSON:
``{"t": "d", "r": run, "s": seq, "x": text}`` for deltas (with ``"f": first`` when the frame
carries deltas first..seq, merged while the socket was behind), ``{"t": type, "html": ...}`` else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from config import metrics

from . import events, streams
from .models import Conversation, Run, RunStatus
from .rendering import message_context, segments, tool_call_context

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_DELETED = 4410
MAX_CLIENT_FRAME = 4096


@database_sync_to_async
def _conversation_for(user, conversation_id) -> Conversation | None:
    """The conversation if the user is a member of its team; None for everyone else. One
    query (it was two: the conversation, then the membership)."""
    return (
        Conversation.objects.select_related("team")
        .filter(uuid=conversation_id, team__memberships__user=user)
        .first()
    )


@database_sync_to_async
def _still_visible(user, conversation_pk: int) -> bool:
    """Whether the conversation still exists and the user is still a member of its team."""
    return Conversation.objects.filter(pk=conversation_pk, team__memberships__user=user).exists()


@database_sync_to_async
def _active_runs(conversation_id: int) -> list[str]:
    return [
        str(run_id)
        for run_id in Run.objects.filter(
            conversation_id=conversation_id, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]
        ).values_list("uuid", flat=True)
    ]


def render_event(event: dict[str, Any]) -> str:
    """The HTML fragment the browser swaps in for an event (no database access)."""
    kind = event["t"]
    if kind == "message.created":
        return render_to_string(
            "assistant/_turn.html",
            {
                "message": message_context(event["message"]),
                "runs": [_run_from_event(event["run"], None)] if event["run"] else [],
            },
        )
    if kind == "run.queued":
        run = {**_run_from_event(event["run"], None), "reply_to": event.get("reply_to", "")}
        return render_to_string("assistant/_run.html", {"run": run})
    if kind.startswith("tool."):
        return render_to_string(
            "assistant/_tool_call.html", {"call": tool_call_context(event["call"])}
        )
    if kind in ("run.completed", "run.failed", "run.cancelled"):
        if event.get("refresh"):
            return ""  # tool calls and diffs come from the database: the page fetches the run
        status = {"run.completed": "succeeded", "run.failed": "failed"}.get(kind, "cancelled")
        run = {"id": event["run"], "status": status, "error": event.get("error", "")}
        return render_to_string("assistant/_run.html", {"run": _run_from_event(run, event)})
    return ""


def _run_from_event(run: dict[str, Any], event: dict[str, Any] | None) -> dict[str, Any]:
    message = event.get("message") if event else None
    live = run["status"] in ("queued", "running", "waiting")
    return {
        "id": run["id"],
        "status": run["status"],
        "error": run.get("error", ""),
        "model": event.get("model", "") if event else "",
        "message": message_context(message) if message else None,
        "text": "",
        "seq": 0,
        "segments": segments(message["content"] if message else "", [], live=live),
    }


def _waiting(layer, channel: str) -> Iterator[dict[str, Any]]:
    """Take the messages already received for ``channel`` and waiting for its consumer, oldest
    first, one at a time as the caller asks. Only the Redis pub/sub layer of production (its
    queue per channel, one per event loop) is looked into; another layer yields nothing."""
    get_layer = getattr(layer, "_get_layer", None)
    if get_layer is None:
        return
    queue = getattr(get_layer(), "channels", {}).get(channel)
    if not isinstance(queue, asyncio.Queue):
        return
    while not queue.empty():
        yield layer.deserialize(queue.get_nowait())


class ConversationConsumer(AsyncWebsocketConsumer):
    conversation: Conversation | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = await _conversation_for(user, conversation_id)
        if self.conversation is None:
            # Same answer for "no such conversation" and "not yours": outsiders learn nothing.
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.conversation_key = str(self.conversation.uuid)
        self.group = events.group_name(self.conversation_key)
        self.user_name = user.name
        self.user_group = events.user_group(user.pk)
        await self.channel_layer.group_add(self.user_group, self.channel_name)
        # Join first, then read snapshots: no delta can fall between the two.
        await self.channel_layer.group_add(self.group, self.channel_name)
        # Joined, then checked again: access that ended in between is not missed.
        if not await _still_visible(user, self.conversation.pk):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_discard(self.user_group, self.channel_name)
            self.conversation = None
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept()
        self.counted = True
        metrics.safely(lambda: metrics.WEBSOCKETS_OPEN.labels("conversation").inc())
        await self._send_sync()
        events.layer_watch().add(self)
        await streams.presence_join(self.conversation_key, self.channel_name, self.user_name)
        await self._broadcast_presence()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            metrics.safely(lambda: metrics.WEBSOCKETS_OPEN.labels("conversation").dec())
        if self.conversation is None:
            return
        events.layer_watch().discard(self)
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await self.channel_layer.group_discard(self.user_group, self.channel_name)
        await streams.presence_leave(self.conversation_key, self.channel_name)
        await self._broadcast_presence()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        if not text_data or len(text_data) > MAX_CLIENT_FRAME:
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        if frame.get("t") == "resync":
            await self._send_sync()
        elif frame.get("t") == "ping":
            # Keeps this viewer's presence entry fresh.
            await streams.presence_join(self.conversation_key, self.channel_name, self.user_name)
            await self.send(text_data='{"t":"pong"}')

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Deltas skip Channels' per-handler database clean-up (a thread hop each time): this
        # path touches no database and is most of the traffic.
        if message["type"] == "conv.delta":
            await self.conv_delta(message)
            return
        await super().dispatch(message)

    async def conv_delta(self, message: dict[str, Any]) -> None:
        # Coalescing by backpressure: the deltas of the same run already waiting for this
        # socket (the process is behind: many streams at once) go out as one frame numbered
        # f..s; a socket that keeps up gets every delta alone, at once.
        run, first, last, parts = message["run"], message["seq"], message["seq"], [message["text"]]
        after = None
        for waiting in _waiting(self.channel_layer, self.channel_name):
            kind, seq = waiting.get("type"), waiting.get("seq")
            if kind == "conv.delta" and waiting["run"] == run and seq == last + 1:
                last = seq
                parts.append(waiting["text"])
                continue
            after = waiting  # anything else ends the run of deltas, and goes out after them
            break
        frame = {"t": "d", "r": run, "s": last, "x": "".join(parts)}
        if last != first:
            frame["f"] = first
        await self.send(text_data=json.dumps(frame, ensure_ascii=False))
        if after is not None:
            await self.dispatch(after)

    async def conv_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        frame = {key: value for key, value in event.items() if key != "message"}
        if event.get("message"):
            frame["message_id"] = event["message"]["id"]
        html = render_event(event)
        if html:
            frame["html"] = html
        await self.send(text_data=json.dumps(frame, ensure_ascii=False, default=str))
        if event["t"] == "conversation.deleted":
            await self.close(code=CLOSE_DELETED)

    async def access_ended(self, message: dict[str, Any]) -> None:
        # Removed from the team, deactivated or deleted: nothing more, from this moment.
        assert self.conversation is not None  # its group is joined once connected to one
        if events.ends_access(message, self.conversation.team_id):
            await self.close(code=CLOSE_NOT_FOUND)

    async def layer_recovered(self) -> None:
        """The channel layer lost Redis for a while (events.LayerWatch): events may have passed
        this socket by, a run's end among them. A fresh sync says what is in flight now."""
        try:
            await self._send_sync()
        except Exception:  # closed meanwhile, or Redis gone again (the next recovery resyncs)
            log.info("Resync after a channel layer outage failed", exc_info=True)

    async def _send_sync(self) -> None:
        assert self.conversation is not None  # called once connected to one
        runs = []
        for run_id in await _active_runs(self.conversation.pk):
            snap = await streams.snapshot(run_id)
            runs.append({"run": run_id, "seq": snap.seq, "text": snap.text})
        await self.send(text_data=json.dumps({"t": "sync", "runs": runs}, ensure_ascii=False))

    async def _broadcast_presence(self) -> None:
        viewers = await streams.presence_list(self.conversation_key)
        await events.publish(self.conversation_key, {"t": "presence", "viewers": viewers})
