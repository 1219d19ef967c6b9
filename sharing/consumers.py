"""The WebSocket of a live share: /ws/share/<token>/.

A viewer joins the conversation's group read-only, plus the link's own group: revoking the
link sends a message there that closes the socket with CLOSE_REVOKED at once; the socket also
closes by itself when the link expires (CLOSE_EXPIRED). Client frames other than ping and resync
are ignored, and the viewer never joins the presence list.

Nothing goes out as the conversation consumer sends it. Presence is dropped (it names members);
fragments are rendered from the database through the share's lens (redacted, people named as
the share names them); and streamed text is redacted as it grows, only its stable part sent
(sharing/redact.py): a delta carries the newly stable text under the original sequence number,
so the page's gap detection works unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string
from django.utils import timezone

from assistant import events, streams
from assistant.models import Run, RunStatus
from config import clientip, metrics

from . import content, ratelimit, services
from .models import ShareLink

log = logging.getLogger(__name__)

CLOSE_NOT_FOUND = 4404  # unknown, revoked, not live, or not for this person: the page stops
CLOSE_DELETED = 4410
CLOSE_RATE_LIMITED = 4429  # too many wrong tokens from this client: the page retries later
MAX_CLIENT_FRAME = 4096


@database_sync_to_async
def _open(token: str, ip: str | None, user) -> tuple[str, ShareLink | None, content.Lens | None]:
    """(outcome, link, lens) for a token; counts a guessed token against the client."""
    if ratelimit.retry_after(ip) is not None:
        return "limited", None, None
    found = services.lookup(token)
    if found.guessed:
        ratelimit.record_failure(ip)
    if found.outcome != services.FOUND:
        return found.outcome, None, None
    link = found.link
    assert link is not None  # FOUND comes with its link
    if not link.is_live or not services.may_view(link, user):
        return services.NOT_FOUND, None, None
    return services.FOUND, link, content.lens_for_link(link)


@database_sync_to_async
def _still_active(link_pk: int, user) -> bool:
    link = ShareLink.objects.filter(pk=link_pk).select_related("conversation__team").first()
    return (
        link is not None
        and services.state(link) == services.FOUND
        and services.may_view(link, user)
    )


@database_sync_to_async
def _active_runs(conversation_pk: int) -> list[tuple[str, int]]:
    """Runs in flight, each with where its text's last piece starts (after its last tool
    call): the page streams into that piece."""
    runs = Run.objects.filter(
        conversation_id=conversation_pk, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]
    ).prefetch_related("tool_calls")
    return [
        (str(run.uuid), max((c.text_offset for c in run.tool_calls.all()), default=0))
        for run in runs
    ]


@database_sync_to_async
def _render_turn(conversation_pk: int, message_id: str, lens: content.Lens) -> str:
    from assistant.models import Message

    message = Message.objects.filter(conversation_id=conversation_pk, uuid=message_id).first()
    if message is None:
        return ""
    context = {**content.turn_view(message, lens), "read_only": True}
    return render_to_string("assistant/_turn.html", context)


@database_sync_to_async
def _render_run(conversation_pk: int, run_id: str, lens: content.Lens) -> str:
    run = (
        Run.objects.filter(conversation_id=conversation_pk, uuid=run_id)
        .select_related("assistant_message", "undone_by", "conversation")
        .first()
    )
    if run is None:
        return ""
    workspace = content.workspace_of(run.conversation)
    context = {"run": content.run_view(run, lens, workspace=workspace), "read_only": True}
    return render_to_string("assistant/_run.html", context)


class _Stream:
    """One run's text as this viewer has it: everything received, where the piece the page
    streams into begins, and how much of that piece has been shown."""

    def __init__(self, lens: content.Lens, raw: str, seq: int, base: int) -> None:
        self.lens, self.raw, self.seq = lens, raw, seq
        self.start_piece(base)

    def start_piece(self, base: int) -> None:
        self.base, self.shown = base, ""
        self.live_text = content.LiveText(self.lens)

    def visible(self) -> str:
        return self.live_text(self.raw[self.base :])


class ShareConsumer(AsyncWebsocketConsumer):
    link: ShareLink | None = None

    async def connect(self) -> None:
        token = self.scope["url_route"]["kwargs"]["token"]
        user = self.scope.get("user")
        outcome, link, lens = await _open(token, clientip.of_scope(self.scope), user)
        # Accept, then close with a reason: a refused handshake would look like a network
        # failure and the page would keep reconnecting.
        await self.accept()
        if outcome == "limited":
            await self.close(code=CLOSE_RATE_LIMITED)
            return
        if outcome == services.EXPIRED:
            await self.close(code=services.CLOSE_EXPIRED)
            return
        if link is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.link, self.lens = link, lens
        self.conversation_pk = link.conversation_id
        self.streams: dict[str, _Stream] = {}
        self.groups_joined = [link.group, events.group_name(str(link.conversation.uuid))]
        if not link.is_public:
            # A member removed from the team (or deactivated, or deleted) loses the team's
            # links at once, too.
            self.groups_joined.append(events.user_group(user.pk))
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        # Joined first, then checked again: a revocation committed in between is not missed.
        if not await _still_active(link.pk, user):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.counted = True
        metrics.safely(lambda: metrics.WEBSOCKETS_OPEN.labels("share").inc())
        await self._send_sync()
        events.layer_watch().add(self)
        self.expiry = None
        if link.expires_at is not None:
            seconds = (link.expires_at - timezone.now()).total_seconds()
            self.expiry = asyncio.create_task(self._close_at_expiry(seconds))

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            metrics.safely(lambda: metrics.WEBSOCKETS_OPEN.labels("share").dec())
        if self.link is None:
            return
        events.layer_watch().discard(self)
        expiry = getattr(self, "expiry", None)
        if expiry is not None:
            expiry.cancel()
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _close_at_expiry(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
        await self.close(code=services.CLOSE_EXPIRED)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        if self.link is None or not text_data or len(text_data) > MAX_CLIENT_FRAME:
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
            await self.send(text_data='{"t":"pong"}')

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Deltas skip Channels' per-handler database clean-up, as in the conversation consumer.
        if message["type"] == "conv.delta":
            await self.conv_delta(message)
            return
        await super().dispatch(message)

    # --- Group messages ---------------------------------------------------------------------

    async def share_ended(self, message: dict[str, Any]) -> None:
        await self.close(code=message.get("code", services.CLOSE_REVOKED))

    async def access_ended(self, message: dict[str, Any]) -> None:
        if self.link is not None and events.ends_access(message, self.link.conversation.team_id):
            await self.close(code=CLOSE_NOT_FOUND)

    async def conv_delta(self, message: dict[str, Any]) -> None:
        if self.link is None:
            return
        run_id, seq = message["run"], message["seq"]
        stream = self.streams.get(run_id)
        if stream is None and seq == 1:
            stream = self.streams[run_id] = _Stream(self.lens, "", 0, 0)
        if stream is None or seq > stream.seq + 1:
            # A run this viewer has no text of (or a gap): start over from the snapshot. At
            # most once a second: a run the snapshot doesn't list must not cost one per delta.
            if asyncio.get_running_loop().time() - self.synced_at >= 1:
                await self._send_sync()
            return
        if seq <= stream.seq:
            return
        stream.raw += message["text"]
        stream.seq = seq
        shown = stream.visible()
        if not shown.startswith(stream.shown):
            # Redaction changed text already shown (rare: a pattern completed across it):
            # the page fetches the run as it is now.
            stream.shown = shown
            await self._send({"t": "run.updated", "run": run_id})
            return
        frame = {"t": "d", "r": run_id, "s": seq, "x": shown[len(stream.shown) :]}
        stream.shown = shown
        await self._send(frame)

    async def conv_event(self, message: dict[str, Any]) -> None:
        if self.link is None:
            return
        event = message["event"]
        kind = event["t"]
        if kind == "message.created":
            html = await _render_turn(self.conversation_pk, event["message"]["id"], self.lens)
            if html:
                await self._send({"t": kind, "message_id": event["message"]["id"], "html": html})
        elif kind == "run.queued":
            run_id = event["run"]["id"]
            html = await _render_run(self.conversation_pk, run_id, self.lens)
            if html:
                frame = {"t": kind, "run": {"id": run_id}, "html": html}
                await self._send({**frame, "reply_to": event.get("reply_to", "")})
        elif kind in ("run.started", "run.waiting", "run.updated"):
            await self._send({"t": kind, "run": event["run"]})
        elif kind.startswith("tool."):
            # The text before a call is complete: the page re-renders the run, with the call
            # in place, and new text streams into a fresh piece after it.
            run_id = event["call"]["run"]
            stream = self.streams.get(run_id)
            if stream is not None:
                stream.start_piece(len(stream.raw))
            await self._send({"t": "run.updated", "run": run_id})
        elif kind in ("run.completed", "run.failed", "run.cancelled"):
            run_id = event["run"]
            self.streams.pop(run_id, None)
            html = await _render_run(self.conversation_pk, run_id, self.lens)
            await self._send({"t": kind, "run": run_id, **({"html": html} if html else {})})
        elif kind == "conversation.renamed":
            await self._send({"t": kind, "title": self.lens.redact(event["title"])})
        elif kind == "conversation.deleted":
            await self._send({"t": kind})
            await self.close(code=CLOSE_DELETED)
        # Anything else (presence above all) is not for share viewers.

    # --- Helpers ------------------------------------------------------------------------------

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, ensure_ascii=False, default=str))

    async def layer_recovered(self) -> None:
        """As the conversation consumer's: a fresh sync after the channel layer lost Redis."""
        try:
            await self._send_sync()
        except Exception:
            log.info("Resync after a channel layer outage failed", exc_info=True)

    async def _send_sync(self) -> None:
        runs = []
        self.streams = {}
        self.synced_at = asyncio.get_running_loop().time()
        for run_id, base in await _active_runs(self.conversation_pk):
            snap = await streams.snapshot(run_id)
            base = min(base, len(snap.text))
            stream = self.streams[run_id] = _Stream(self.lens, snap.text, snap.seq, base)
            stream.shown = stream.visible()
            runs.append({"run": run_id, "seq": snap.seq, "text": stream.shown})
        await self._send({"t": "sync", "runs": runs})
