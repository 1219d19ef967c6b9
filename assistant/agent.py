"""One assistant turn: claim the run, build the prompt, stream the reply, save it.

Async from end to end so one worker process (or the embedded server) holds many turns at once.
The streamed text is coalesced into numbered deltas; the saved message is exactly their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings

from . import events, llm, streams
from .models import Message, Role, Run, RunStatus
from .services import arun_claim, arun_finish, arun_heartbeat, ausage_record

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are Tandem, an AI coding assistant working with a software team in a shared "
    "conversation. Several teammates may read and write here. Answer in Markdown; put code in "
    "fenced blocks with a language. Be concise and concrete."
)
HISTORY_CHARS = 120_000  # keep the prompt well inside common context windows
CANCEL_POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 20  # well inside services.STALE_AFTER


class DeltaPublisher:
    """Coalesces text pieces into numbered deltas and publishes them in order.

    The first piece after a quiet spell goes out at once; pieces arriving within the window
    after it are joined and go out when the window ends. Publishing happens on a separate task,
    so a slow Redis never holds up reading the provider's stream.
    """

    def __init__(self, conversation_id: str, run_id: str, window_ms: int) -> None:
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.window = window_ms / 1000
        self.loop = asyncio.get_running_loop()
        self.seq = 0
        self.pending: list[str] = []
        self.last_flush = -1e9
        self.timer: asyncio.TimerHandle | None = None
        # Production batches every run's deltas into shared Redis round trips; embedded mode
        # (in-memory layer and state) sends them one by one, which costs nothing there.
        self.batcher = events.DeltaBatcher.for_this_loop() if settings.REDIS_URL else None
        self.last_sent: asyncio.Future | None = None
        self.queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        self.sender = None if self.batcher else asyncio.create_task(self._send_all())

    def add(self, text: str) -> None:
        self.pending.append(text)
        if self.loop.time() - self.last_flush >= self.window:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_at(self.last_flush + self.window, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.pending:
            return
        self.seq += 1
        text = "".join(self.pending)
        self.pending.clear()
        self.last_flush = self.loop.time()
        if self.batcher:
            self.last_sent = self.batcher.add(self.conversation_id, self.run_id, self.seq, text)
        else:
            self.queue.put_nowait((self.seq, text))

    def sent_within(self, seconds: float) -> bool:
        return bool(self.batcher) and self.loop.time() - self.last_flush < seconds

    def cancel_seen(self) -> bool:
        """Whether a recent batch saw this run's cancel flag (saves a poll of Redis)."""
        return bool(self.batcher and self.run_id in self.batcher.cancel_requested)

    async def _send_all(self) -> None:
        while (item := await self.queue.get()) is not None:
            seq, text = item
            try:
                await streams.append(self.run_id, seq, text)
                await events.publish_delta(self.conversation_id, self.run_id, seq, text)
            except Exception:
                # Live viewers miss this delta; the saved message still has it all.
                log.exception("Could not publish delta %s of run %s", seq, self.run_id)

    async def close(self) -> None:
        self.flush()
        if self.batcher:
            if self.last_sent is not None:
                await self.last_sent
            self.batcher.cancel_requested.discard(self.run_id)
            return
        self.queue.put_nowait(None)
        await self.sender


def _build_prompt(run: Run) -> list[dict]:
    """The conversation up to the run's user message, newest kept when it is too long."""
    history = list(
        Message.objects.filter(
            conversation_id=run.conversation_id, created__lte=run.user_message.created
        )
        .exclude(content="")
        .order_by("created", "id")
        .values_list("role", "content", "id")
    )
    # Keep only messages up to and including this run's own user message.
    cut = next(
        (i for i, (_, _, pk) in enumerate(history) if pk == run.user_message_id), len(history) - 1
    )
    history = history[: cut + 1]
    selected: list[dict] = []
    budget = HISTORY_CHARS
    for role, content, _ in reversed(history):
        if budget - len(content) < 0 and selected:
            break
        budget -= len(content)
        selected.append(
            {"role": "assistant" if role == Role.ASSISTANT else "user", "content": content}
        )
    selected.reverse()
    return [{"role": "system", "content": SYSTEM_PROMPT}, *selected]


_abuild_prompt = sync_to_async(_build_prompt, thread_sensitive=False)
_aconfig_for_team = sync_to_async(llm.config_for_team, thread_sensitive=False)


async def execute_run(run_id: str) -> None:
    """Execute one run, once. Safe to call twice for the same run: the second finds it
    already claimed and returns."""
    run = await arun_claim(run_id)
    if run is None:
        return
    conversation_id = str(run.conversation.uuid)
    config = await _aconfig_for_team(run.conversation.team)
    await events.publish(
        conversation_id, {"t": "run.started", "run": run_id, "model": config.label}
    )
    publisher = DeltaPublisher(conversation_id, run_id, settings.STREAM_COALESCE_MS)
    parts: list[str] = []
    usage = llm.Usage()
    status, error, outcome = RunStatus.SUCCEEDED, "", "ok"
    started = time.monotonic()
    try:
        messages = await _abuild_prompt(run)
        cancelled = await _stream_until_cancelled(config, messages, publisher, parts, usage, run)
        if cancelled:
            status, outcome = RunStatus.CANCELLED, "cancelled"
    except llm.LLMError as exc:
        status, error, outcome = RunStatus.FAILED, exc.message, exc.code
    except Exception:
        log.exception("Run %s failed", run_id)
        status, error, outcome = RunStatus.FAILED, "Tandem had an internal error.", "internal"
    finally:
        await publisher.close()
    usage.latency_ms = usage.latency_ms or int((time.monotonic() - started) * 1000)
    text = "".join(parts)
    message = await arun_finish(run=run, status=status, text=text, error=error, model=config.label)
    await ausage_record(run=run, model=config.model, usage=usage, outcome=outcome)
    await _announce_end(conversation_id, run_id, status, error, message, config.label)
    await streams.discard(run_id)


async def _stream_until_cancelled(config, messages, publisher, parts, usage, run) -> bool:
    """Stream the reply into ``parts``; return True when someone pressed Stop."""
    run_id = str(run.uuid)

    async def consume() -> None:
        async for item in llm.stream_chat(config, messages):
            if isinstance(item, llm.Usage):
                usage.__dict__.update(item.__dict__)
            else:
                parts.append(item)
                publisher.add(item)

    task = asyncio.create_task(consume())
    last_beat = time.monotonic()
    while True:
        done, _ = await asyncio.wait({task}, timeout=CANCEL_POLL_SECONDS)
        if done:
            task.result()  # re-raises LLMError
            return False
        if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
            last_beat = time.monotonic()
            await arun_heartbeat(run)
        # While deltas flow, each batch already looks at the cancel flag: poll only when quiet.
        if publisher.cancel_seen() or (
            not publisher.sent_within(CANCEL_POLL_SECONDS)
            and await streams.is_cancel_requested(run_id)
        ):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return True


async def _announce_end(conversation_id, run_id, status, error, message, model) -> None:
    event_type = {
        RunStatus.SUCCEEDED: "run.completed",
        RunStatus.FAILED: "run.failed",
        RunStatus.CANCELLED: "run.cancelled",
    }[status]
    await events.publish(
        conversation_id,
        {
            "t": event_type,
            "run": run_id,
            "error": error,
            "model": model,
            "message": events.message_data(message) if message else None,
        },
    )
