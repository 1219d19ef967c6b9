"""GET /api/v1/conversations/{id}/events: a conversation's events as Server-Sent Events.

The stream reads the conversation's event log (api/eventlog.py), never the channel layer, so
what a client gets doesn't depend on being subscribed at the right instant:

- Without Last-Event-ID, it starts now: a ``snapshot`` event (the runs in flight, each with
  its text so far and last delta number) whose id is the log's position when the stream
  opened, then every event after that position. The position is read first and the snapshot
  after, so the snapshot may already hold a few deltas the log then sends: those (a run's
  delta numbered at or below the snapshot's) are dropped here.
- With Last-Event-ID (or ``?last_event_id=``), it sends exactly the events after that id. If
  the log can't vouch for them (trimmed or expired meanwhile, or an id it never gave), it
  sends ``reset`` and a fresh ``snapshot``: the client reloads the conversation.

The stream ends the moment the caller loses the team (removed, deactivated, deleted: the
``access.ended`` event of assistant/events.py, which it listens for on the channel layer). An
idle stream sends a comment every API_SSE_HEARTBEAT_SECONDS and checks, as it does that often
in any case, that the caller may still see the conversation (a revoked key, a deleted
conversation end the stream).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Exists, Q
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from assistant import events
from assistant.models import Conversation, Run
from assistant.services import IN_FLIGHT
from config import metrics
from config.db import is_unavailable, release, unavailable_response

from . import data, eventlog
from .http import ApiError, Caller, admit, error_response, not_found, team_param
from .models import ApiKey

log = logging.getLogger(__name__)

# A reader that spent longer than this away from the log (sending, checking access) reads
# next with the trim check; within it, it can't have fallen API_EVENT_LOG_LENGTH behind.
CHECK_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class Opened:
    caller: Caller
    conversation_pk: int
    conversation_id: str
    team_id: int
    after: eventlog.EntryId | None


def _open(request: HttpRequest, conversation_id: uuid.UUID) -> Opened:
    caller, _ = admit(request)
    conversation = (
        Conversation.objects.filter(caller.in_teams("", team_param(request)))
        .filter(uuid=conversation_id)
        .first()
    )
    if conversation is None:
        raise not_found("The conversation")
    raw = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or ""
    after = None
    if raw.strip():
        after = eventlog.parse_id(raw)
        if after is None:
            raise ApiError(400, "invalid_last_event_id", "Last-Event-ID is not an event id.")
    return Opened(caller, conversation.pk, str(conversation.uuid), conversation.team_id, after)


def _snapshot(conversation_pk: int) -> list[dict[str, Any]]:
    runs = Run.objects.filter(conversation_id=conversation_pk, status__in=IN_FLIGHT)
    snapshot = []
    for run in runs.order_by("created", "id"):
        seq, text = data.in_flight_text(run)
        snapshot.append({"id": str(run.uuid), "status": run.status, "seq": seq, "text": text})
    return snapshot


def _still_allowed(opened: Opened) -> bool:
    """The conversation is still there, its caller still an active member of its team and
    their key (if they came with one) not revoked or expired: one query."""
    caller = opened.caller
    allowed = Conversation.objects.filter(
        pk=opened.conversation_pk,
        team__memberships__user=caller.user,
        team__memberships__user__is_active=True,
    )
    if caller.key is not None:
        usable = ApiKey.objects.filter(pk=caller.key.pk, revoked_at__isnull=True).filter(
            Q(expires__isnull=True) | Q(expires__gt=timezone.now())
        )
        allowed = allowed.filter(Exists(usable))
    return allowed.exists()


# Opening runs like any sync view, in the request's thread, and gives that thread's database
# connection back to the pool when done (the request's own clean-up comes only when the stream
# ends, hours later). What runs later, while the stream is open, uses pool threads that
# return theirs after each call: a waiting stream holds no thread and no connection.
_aopen = sync_to_async(release(_open))
_asnapshot = database_sync_to_async(_snapshot, thread_sensitive=False)
_astill_allowed = database_sync_to_async(_still_allowed, thread_sensitive=False)


def frame(event: str, payload: dict[str, Any], event_id: eventlog.EntryId | None = None) -> bytes:
    # JSON escapes newlines inside strings, so the data is one line whatever the text holds.
    lines = []
    if event_id is not None:
        lines.append(f"id: {eventlog.format_id(event_id)}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


async def _events(opened: Opened) -> AsyncIterator[bytes]:
    """The stream, ended at once when the caller's access to the team ends."""
    try:
        async with events.AccessWatch(opened.caller.user.pk, opened.team_id) as watch:
            ended = asyncio.ensure_future(watch.ended())
            metrics.safely(metrics.SSE_OPEN.inc)
            try:
                # Listening, then checked again: access that ended in between is not missed.
                if not await _astill_allowed(opened):
                    return
                async for chunk in _log_events(opened, ended):
                    yield chunk
            finally:
                metrics.safely(metrics.SSE_OPEN.dec)
                ended.cancel()
    except (RedisError, OSError, DatabaseError) as exc:
        # Redis or the database went away (restarting, say). The response has begun, so an
        # error can't be answered any more, and one raised here would leave the connection
        # hanging: end the stream. The client comes back with its Last-Event-ID after the
        # retry delay, and resumes or is told to reset (a restarted Redis kept no log:
        # api/eventlog.py).
        log.warning(
            "Event stream of %s ended, a service unavailable: %r", opened.conversation_id, exc
        )


async def _log_events(opened: Opened, ended: asyncio.Future[Any]) -> AsyncIterator[bytes]:
    reader = eventlog.reader_for(opened.conversation_id)
    heartbeat = settings.API_SSE_HEARTBEAT_SECONDS
    # Seen in a snapshot: run id -> its last delta number there.
    covered: dict[str, int] = {}

    async def start_over(
        state: eventlog.LogState, reason: str | None
    ) -> tuple[eventlog.EntryId, bytes]:
        nonlocal covered
        chunks = [] if reason is None else [frame("reset", {"reason": reason})]
        runs = await _asnapshot(opened.conversation_pk)
        covered = {run["id"]: run["seq"] for run in runs}
        chunks.append(frame("snapshot", {"runs": runs}, state.tail))
        return state.tail, b"".join(chunks)

    try:
        yield b"retry: 2000\n\n"
        if opened.after is None:
            position, chunk = await start_over(await reader.state(), None)
            yield chunk
            pending: list[eventlog.Entry] = []
        else:
            state, pending = await reader.read_checked(opened.after)
            position = opened.after
            if not state.has_everything_after(position):
                position, chunk = await start_over(state, "events after Last-Event-ID are gone")
                pending = []
                yield chunk
        checked_at = read_at = time.monotonic()
        while not ended.done():
            out = []
            for entry_id, event in pending:
                position = entry_id
                kind = event.get("t", "event")
                if kind == "delta" and covered.get(event.get("run", ""), 0) >= event.get("seq", 0):
                    continue
                # The entry is shared with the other streams of this conversation (one read
                # for all: api/eventlog.py's LogHub): copied, not changed.
                payload = {key: value for key, value in event.items() if key != "t"}
                out.append(frame(kind, payload, entry_id))
                if kind == "conversation.deleted":
                    yield b"".join(out)
                    return
            if out:
                yield b"".join(out)
            if time.monotonic() - checked_at >= heartbeat:
                checked_at = time.monotonic()
                if not await _astill_allowed(opened):
                    return
            if len(pending) >= eventlog.COUNT or time.monotonic() - read_at > CHECK_AFTER_SECONDS:
                state, pending = await reader.read_checked(position)
                if not state.has_everything_after(position):
                    position, chunk = await start_over(state, "the stream fell too far behind")
                    pending = []
                    yield chunk
            else:
                waited = await reader.wait(position, int(heartbeat * 1000), until=ended)
                if waited is None:
                    return
                pending = waited
                if not pending:
                    yield b": keepalive\n\n"
            read_at = time.monotonic()
    finally:
        # Also on a client that went away: Django cancels the stream, and the blocked read
        # ends with its connection.
        await reader.close()


@csrf_exempt
async def conversation_events(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponseBase:
    if request.method != "GET":
        return error_response(
            405, "method_not_allowed", f"{request.method} is not allowed here.", {"Allow": "GET"}
        )
    try:
        opened = await _aopen(request, conversation_id)
    except ApiError as exc:
        return exc.response()
    except Exception as exc:
        if is_unavailable(exc):
            return unavailable_response(request, exc)
        log.exception("Could not open the event stream of %s", conversation_id)
        return error_response(500, "internal_error", "Tandem had an internal error.")
    response = StreamingHttpResponse(_events(opened), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response
