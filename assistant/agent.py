"""One assistant turn: claim the run, build the prompt, stream the reply, save it.

When the conversation works on a repository the turn is an agent loop: the model answers, and
when it asks for tools they run in the sandbox and their results go back to it, until it answers
without asking for any (or a limit is reached). A command that needs a person's approval parks
the run (status "waiting"): the worker lets go of it, and a decision queues it again, to resume
on any worker from what the database holds.

Async from end to end so one worker process (or the embedded server) holds many turns at once.
The streamed text is coalesced into numbered deltas; the saved message is exactly their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from django.conf import settings
from django.utils import timezone

from config import logs, metrics
from config.db import db_sync_to_async

from . import (
    diffs,
    egress,
    environment,
    events,
    file_links,
    hooks,
    llm,
    policy,
    repo_context,
    repos,
    sandbox,
    streams,
    tools,
)
from .errors import BudgetExceeded
from .models import (
    FINISHED_STATUSES,
    Approval,
    Message,
    Role,
    Run,
    RunStatus,
    ToolCall,
    ToolCallStatus,
    Workspace,
)
from .sandbox import SandboxLimits
from .services import (
    arun_heartbeat,
    arun_park,
    ausage_record_tool,
    run_claim,
    run_finish,
    usage_record,
)
from .tools import toolbox as toolboxes

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are Tandem, an AI coding assistant working with a software team in a shared "
    "conversation. Several teammates may read and write here. Answer in Markdown; put code in "
    "fenced blocks with a language. Be concise and concrete."
)
AGENT_PROMPT = (
    "This conversation works on the team's git repository, checked out for it alone. Use the "
    "tools to read, search and change files and to run commands; paths are relative to the "
    "repository root. Commands run in a sandbox without network access. Some commands need a "
    "teammate's approval first; when one is denied, do not run it in another form: say what "
    "you wanted it for. Make focused changes and check them (run the tests where there are "
    "some) before you say you are done, then summarise what you changed."
)
OLD_TOOL_OUTPUT_CHARS = 2_000  # earlier turns' tool output, as the model sees it again
HISTORY_CHARS = 120_000  # keep the prompt well inside common context windows
CANCEL_POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 20  # well inside services.STALE_AFTER


class DeltaPublisher:
    """Coalesces text pieces into numbered deltas and publishes them in order.

    Coalescing only when load calls for it: while few replies stream on this event loop
    (STREAM_COALESCE_ABOVE), every piece goes out at once — a fixed window made each word wait
    up to its length even with nothing else streaming. Past that many, the first piece after a
    quiet spell goes out at once and pieces arriving within the window after it are joined and
    go out when the window ends: every event costs the web processes ~0.1 ms of CPU per viewer, so
    hundreds of streams sending each token would saturate them. Publishing happens on a
    separate task, so a slow Redis never holds up reading the provider's stream.
    """

    # The publishers of the replies streaming on each event loop (weakly held: a reply that
    # ends without close() does not keep counting).
    _streaming: ClassVar[dict[int, weakref.WeakSet[DeltaPublisher]]] = {}

    def __init__(
        self,
        conversation_id: str,
        run_id: str,
        window_ms: int,
        start_seq: int = 0,
        start_text: str = "",
    ) -> None:
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.window = window_ms / 1000
        self.loop = asyncio.get_running_loop()
        self.seq = start_seq  # a resumed run goes on numbering where it stopped
        self.start_seq = start_seq
        # What has been flushed, as deltas (the text a resumed run had first): Redis's copy is
        # checked against its length, and written again from it when Redis lost it.
        self.flushed = [start_text]  # then delta start_seq + 1, + 2…
        self.flushed_bytes = [len(start_text.encode())]  # the length through each of them
        self.pending: list[str] = []
        self.last_flush = -1e9
        self.timer: asyncio.TimerHandle | None = None
        # Production batches every run's deltas into shared Redis round trips; embedded mode
        # (in-memory layer and state) sends them one by one, which costs nothing there.
        self.batcher = events.DeltaBatcher.for_this_loop() if settings.REDIS_URL else None
        self.last_sent: asyncio.Future | None = None
        self.queue: asyncio.Queue[tuple[int, str, float] | None] = asyncio.Queue()
        self.sender = None if self.batcher else asyncio.create_task(self._send_all())
        self.streaming = self._streaming.setdefault(id(self.loop), weakref.WeakSet())
        self.streaming.add(self)

    def current_window(self) -> float:
        return self.window if len(self.streaming) > settings.STREAM_COALESCE_ABOVE else 0.0

    def add(self, text: str) -> None:
        self.pending.append(text)
        if self.timer is not None:
            return  # a window is open: this piece goes out with it
        window = self.current_window()
        if self.loop.time() - self.last_flush >= window:
            self.flush()
        else:
            self.timer = self.loop.call_at(self.last_flush + window, self.flush)

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
            self.flushed.append(text)
            self.flushed_bytes.append(self.flushed_bytes[-1] + len(text.encode()))
            self.last_sent = self.batcher.add(
                self.conversation_id, self.run_id, self.seq, text, self
            )
        else:
            self.queue.put_nowait((self.seq, text, time.monotonic()))

    def length_through(self, seq: int) -> int:
        """The stream's length in bytes from its start through delta ``seq``."""
        return self.flushed_bytes[seq - self.start_seq]

    def text_through(self, seq: int) -> str:
        return "".join(self.flushed[: seq - self.start_seq + 1])

    def sent_within(self, seconds: float) -> bool:
        return bool(self.batcher) and self.loop.time() - self.last_flush < seconds

    def cancel_seen(self) -> bool:
        """Whether a recent batch saw this run's cancel flag (saves a poll of Redis)."""
        return bool(self.batcher and self.run_id in self.batcher.cancel_requested)

    async def drain(self) -> None:
        """Publish what is pending and wait until it is out: an event published next (a tool
        call starting, say) then reaches viewers after the text that came before it."""
        self.flush()
        if self.batcher:
            if self.last_sent is not None:
                await self.last_sent
        else:
            await self.queue.join()

    async def _send_all(self) -> None:
        while (item := await self.queue.get()) is not None:
            seq, text, emitted = item
            try:
                await streams.append(self.run_id, seq, text)
                await events.publish_delta(self.conversation_id, self.run_id, seq, text)
                metrics.safely(metrics.DELTA_LAG.observe, time.monotonic() - emitted)
            except Exception:
                # Live viewers miss this delta; the saved message still has it all.
                log.exception("Could not publish delta %s of run %s", seq, self.run_id)
            finally:
                self.queue.task_done()

    async def close(self) -> None:
        self.streaming.discard(self)
        self.flush()
        if self.batcher:
            if self.last_sent is not None:
                await self.last_sent
            self.batcher.cancel_requested.discard(self.run_id)
            return
        self.queue.put_nowait(None)
        assert self.sender is not None  # started in __init__ when there is no batcher
        await self.sender


# --- The prompt ---------------------------------------------------------------------------------


def _result_text(call: ToolCall, limit: int | None = None) -> str:
    """A tool call's result as the model reads it."""
    if call.status == ToolCallStatus.DENIED:
        who = call.decided_by.name if call.decided_by else "A teammate"
        return f"Not run: {who} denied this command."
    if call.status == ToolCallStatus.CANCELLED:
        return "Not finished: the run was stopped."
    if not call.is_done:
        return "Not run."
    text = call.output
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"\n[… {len(call.output) - limit} more characters not shown]"
    return text if call.status == ToolCallStatus.SUCCEEDED else f"Error: {text}"


def replay(text: str, calls: list[ToolCall], *, output_limit: int | None = None) -> list[dict]:
    """A turn as the model saw it: text, tool calls, their results, and so on; ``calls`` in
    (step, index) order, each knowing where in ``text`` it came."""
    turn: list[dict] = []
    pos = 0
    by_step: dict[int, list[ToolCall]] = {}
    for call in calls:
        if call.step == 0:  # the environment's setup (step 0 is no model answer's): not the model's
            continue
        by_step.setdefault(call.step, []).append(call)
    for group in by_step.values():
        offset = min(max(group[0].text_offset, pos), len(text))
        turn.append(
            {
                "role": "assistant",
                "content": text[pos:offset],
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": _json_or_empty(call)},
                    }
                    for call in group
                ],
            }
        )
        turn += [
            {
                "role": "tool",
                "tool_call_id": call.call_id,
                "content": _result_text(call, output_limit),
            }
            for call in group
        ]
        pos = offset
    if text[pos:]:
        turn.append({"role": "assistant", "content": text[pos:]})
    return turn


def _json_or_empty(call: ToolCall) -> str:
    """The arguments as sent, or "{}" when they don't parse: providers (and litellm's own
    translations) reject a history whose tool arguments are not JSON. The call's result says
    what was wrong with them."""
    args, error = _parse_arguments(call.arguments)
    return call.arguments if error is None and isinstance(args, dict) else "{}"


def _size(entry: list[dict]) -> int:
    return sum(
        len(m.get("content") or "") + len(json.dumps(m.get("tool_calls", ""))) for m in entry
    )


def _build_prompt(
    run: Run,
    text_so_far: str,
    workspace: Workspace | None,
    context: str | None = None,
    tools_text: str = "",
) -> list[dict]:
    """The conversation up to the run's user message (newest kept when it is too long), then
    what this run has done so far."""
    anchor = run.user_message
    users = list(
        Message.objects.filter(
            conversation_id=run.conversation_id, role=Role.USER, created__lte=anchor.created
        ).exclude(content="")
    )
    earlier_runs = list(
        Run.objects.filter(
            conversation_id=run.conversation_id,
            status__in=FINISHED_STATUSES,
            user_message__created__lte=anchor.created,
        )
        .exclude(pk=run.pk)
        .select_related("assistant_message")
    )
    calls: dict[int, list[ToolCall]] = {}
    # A run that made no model call has no calls the model sees (only the setup's, at step 0,
    # which replay() leaves out): the first message of a conversation needs no query here.
    asked = [r for r in [*earlier_runs, run] if r.steps]
    if asked:
        for call in ToolCall.objects.filter(run__in=asked).select_related("decided_by"):
            calls.setdefault(call.run_id, []).append(call)
    by_user: dict[int, list[Run]] = {}
    for earlier in earlier_runs:
        by_user.setdefault(earlier.user_message_id, []).append(earlier)

    # Entries are kept or dropped whole: a tool call never loses its result.
    entries: list[list[dict]] = []
    for message in users:  # in (created, id) order, up to and including the anchor
        entries.append([{"role": "user", "content": message.content}])
        for earlier in by_user.get(message.pk, []):
            text = (
                earlier.assistant_message.content if hasattr(earlier, "assistant_message") else ""
            )
            entry = replay(text, calls.get(earlier.pk, []), output_limit=OLD_TOOL_OUTPUT_CHARS)
            if entry:
                entries.append(entry)
        if message.pk == anchor.pk:
            break
    selected: list[list[dict]] = []
    budget = HISTORY_CHARS
    for entry in reversed(entries):
        size = _size(entry)
        if budget - size < 0 and selected:
            break
        budget -= size
        selected.append(entry)
    selected.reverse()
    system = SYSTEM_PROMPT
    if workspace is not None:
        if context is None:
            context = repo_context.build_safe(workspace=workspace)
        system = f"{SYSTEM_PROMPT}\n\n{AGENT_PROMPT}" + (f"\n\n{context}" if context else "")
    if tools_text:  # the team's own tools: when to use them, and any that are missing
        system = f"{system}\n\n{tools_text}"
    prompt = [{"role": "system", "content": system}]
    for entry in selected:
        prompt += entry
    return prompt + replay(text_so_far, calls.get(run.pk, []))


def _prompt_and_reserve(
    run: Run,
    text_so_far: str,
    workspace: Workspace | None,
    context: str | None,
    tools_text: str,
    model: str,
) -> list[dict]:
    """The prompt of the next model call, then the call's budget hold (BudgetExceeded when the
    team's budget or the member's tokens for today are used up), in one trip to a pool
    thread: each trip waits for a thread and a pooled connection."""
    messages = _build_prompt(run, text_so_far, workspace, context, tools_text)
    hooks.meter().reserve(run=run, model=model, messages=messages)
    return messages


_aprompt_and_reserve = db_sync_to_async(_prompt_and_reserve)


# --- One turn -----------------------------------------------------------------------------------


class Parked(Exception):
    """A command waits for a person's decision; the run lets go of its worker."""


class Stopped(Exception):
    """Someone pressed Stop."""


class CannotContinue(Exception):
    """The turn ends here, failed, for the reason in the message (a limit, say)."""


@dataclass
class Turn:
    run: Run
    config: llm.LLMConfig
    workspace: Workspace | None
    publisher: DeltaPublisher
    parts: list[str] = field(default_factory=list)
    allowlist: list[str] = field(default_factory=list)
    # Allowlist entries that hold only while the run has not changed files (policy.py), and
    # whether it has: a file edit or a command that is not read-only ran in this run.
    guarded: set[str] = field(default_factory=set)
    changed: bool = False
    tokens: int = 0
    # The repository's context, read once per turn: a snapshot of a large tree costs ~0.2 s,
    # and a system prompt that stays the same keeps the provider's prompt cache warm.
    context: str | None = None
    last_beat: float = field(default_factory=time.monotonic)
    # This execution's tools: built-ins and the team's own (plugins, MCP servers), closed at
    # the end of the execution so what they started for it stops.
    toolbox: toolboxes.Toolbox = field(default_factory=lambda: toolboxes.Toolbox([]))
    # Whether the run may have tool calls from before this execution (it had made model calls:
    # a resumed run), and whether this execution saved some.
    resumed: bool = False
    saved_calls: bool = False

    @property
    def run_id(self) -> str:
        return str(self.run.uuid)

    @property
    def conversation_id(self) -> str:
        return str(self.run.conversation.uuid)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _changed_in_run(run: Run, box: toolboxes.Toolbox) -> bool:
    """Whether a tool call of this run that ran may have changed files (see policy.py)."""
    ran = (ToolCallStatus.RUNNING, ToolCallStatus.SUCCEEDED, ToolCallStatus.FAILED)
    calls = run.tool_calls.filter(status__in=ran).exclude(step=0)  # step 0: the setup's
    for name, arguments in calls.values_list("name", "arguments"):
        args, _ = _parse_arguments(arguments)
        if policy.changes_files(name, args, box.read_only(name)):
            return True
    return False


def _workspace_of(run: Run) -> Workspace | None:
    """The workspace the claim read with the run (services.run_claim), or None."""
    try:
        return run.conversation.workspace
    except Workspace.DoesNotExist:
        return None


def _waits_for_workspace(run_id: str) -> bool:
    """Whether the run would be left queued now: its workspace is still being prepared (the
    claim asks the same in its UPDATE)."""
    from .services import workspace_pending

    return Run.objects.filter(uuid=run_id).filter(workspace_pending()).exists()


def _tokens_used(run: Run) -> int:
    if not run.steps:
        # No model call yet (each is counted as a step before it is metered): nothing used,
        # and no query. A retry is a new run, so it starts from nothing too.
        return 0
    return hooks.meter().tokens_used(run)


def _save(instance, **changes) -> None:
    for key, value in changes.items():
        setattr(instance, key, value)
    type(instance).objects.filter(pk=instance.pk).update(**changes)


_asave = db_sync_to_async(_save)


@dataclass
class _Start:
    """What a turn reads from the database before its first model call, read in one go."""

    run: Run
    config: llm.LLMConfig
    workspace: Workspace | None
    tokens: int
    guarded: set[str]
    # What the toolbox's readers (the team's plugins, its MCP tools) answered for this request.
    tools: toolboxes.ToolboxRequest | None = None
    tools_read: dict = field(default_factory=dict)
    # A read after the claim that failed: raised where the turn handles failures, so the
    # claimed run ends failed in words instead of staying "running" until it is swept.
    error: Exception | None = None


def _claim_and_read(run_id: str) -> _Start | None:
    # One trip to a pool thread instead of five: with many runs starting at once, each
    # trip waits its turn for the loop's few executor threads, and the first word waits
    # for all of them (docs/benchmarks.md, issue 14). Two queries for a new run: the claim
    # (which leaves the run queued while its workspace is being prepared: the job preparing
    # it queues it again once done) and the run with everything the turn reads; then what the
    # toolbox's readers read (toolboxes.read), which would otherwise be a trip of its own.
    run = run_claim(run_id, unless_workspace_pending=True)
    if run is None:
        return None
    team = run.conversation.team
    start = _Start(
        run=run,
        config=llm.config_for_team(team),
        workspace=None,
        tokens=0,
        guarded=policy.guarded_entries(team),
    )
    try:
        start.workspace = _workspace_of(run)
        start.tokens = _tokens_used(run)
        start.tools = toolboxes.ToolboxRequest(
            team=team, conversation=run.conversation, run=run, workspace=start.workspace
        )
        start.tools_read = toolboxes.read(start.tools)
    except Exception as exc:
        start.error = exc
    return start


_aclaim_and_read = db_sync_to_async(_claim_and_read)


async def execute_run(run_id: str) -> None:
    """Execute one run, once. Safe to call twice for the same run: the second finds it
    already claimed and returns. A parked run that was approved is queued again and comes
    back here, to go on from where it stopped."""
    start = await _aclaim_and_read(run_id)
    if start is None:
        return
    run, config = start.run, start.config
    conversation_id = str(run.conversation.uuid)
    # This run's task has a context of its own: its log lines name it, whatever else the loop runs.
    logs.bind_here(
        run=run_id,
        conversation=conversation_id,
        team=run.conversation.team.slug,
        user=run.requested_by_id,
    )
    log.info("Run started (%s)", config.label)
    await events.publish(
        conversation_id, {"t": "run.started", "run": run_id, "model": config.label}
    )
    if run.seq:
        await streams.seed(run_id, run.seq, run.text)
    publisher = DeltaPublisher(
        conversation_id, run_id, settings.STREAM_COALESCE_MS, run.seq, run.text
    )
    turn = Turn(
        run=run,
        config=config,
        workspace=start.workspace,
        publisher=publisher,
        parts=[run.text] if run.text else [],
        allowlist=policy.parse_allowlist(run.conversation.team.command_allowlist),
        guarded=start.guarded,
        tokens=start.tokens,
        resumed=run.steps > 0,
    )
    status, error = RunStatus.SUCCEEDED, ""
    try:
        try:
            if start.error is not None:
                raise start.error
            assert start.tools is not None  # made with the reads, or start.error says why not
            turn.toolbox = await toolboxes.build(start.tools, already_read=start.tools_read)
            if turn.guarded and run.steps:  # a resumed run: what its calls so far did
                turn.changed = await db_sync_to_async(_changed_in_run)(run, turn.toolbox)
            if turn.workspace is not None and not run.tree_before:
                # Before the turn's first snapshot: what setup makes is not the turn's change.
                await _prepare_environment(turn)
                tree = await _asnapshot(turn.workspace)
                await _asave(run, tree_before=tree)
            await _agent_loop(turn)
        finally:
            # What the team's tools started for this execution (an MCP server's process)
            # stops here, before the tree is read and whether the run parks, ends or dies.
            await turn.toolbox.aclose()
    except Parked:
        await publisher.close()
        await _park(turn)
        log.info("Run parked: waiting for a member's approval")
        return
    except Stopped:
        status = RunStatus.CANCELLED
    except CannotContinue as exc:
        status, error = RunStatus.FAILED, str(exc)
    except llm.LLMError as exc:
        status, error = RunStatus.FAILED, exc.message
    except repos.RepoError as exc:
        status, error = RunStatus.FAILED, str(exc)
    except Exception:
        log.exception("Run %s failed", run_id)
        status, error = RunStatus.FAILED, "Tandem had an internal error."
    await publisher.close()
    tree_after = ""
    if turn.workspace is not None and run.tree_before:
        try:
            tree_after = await _asnapshot(turn.workspace)
        except repos.RepoError as exc:
            # Said on the turn, in words: without it the reply shows no changes and cannot be
            # undone, and the person should know why.
            log.warning("Could not read the changes of run %s: %s", run_id, exc)
            note = f"The changes of this reply could not be recorded: {exc}"
            error = f"{error} {note}" if error else note
        else:
            # Stored before the run is marked finished, so the bubble that refreshes then
            # shows it; pages only ever read it from the database.
            await _arecord_changes(run, turn.workspace, tree_after)
    message, has_calls = await _afinish_run(
        run, status=status, text=turn.text, error=error, model=config.label,
        tree_after=tree_after,
        # Without a repository a turn has tool calls too when the team's tools need none (an
        # MCP server's, say); a new run that saved none in this execution has none.
        ask_calls=turn.workspace is None and (turn.resumed or turn.saved_calls),
    )  # fmt: skip
    await _announce_end(turn, status, error, message, has_calls)
    try:
        await streams.discard(run_id)
    except Exception as exc:  # Redis restarting: the keys expire by themselves
        log.warning("Could not discard the stream of run %s: %r", run_id, exc)
    log.info("Run ended: %s", status)


_asnapshot = db_sync_to_async(lambda ws: repos.snapshot(workspace=ws))


def _record_changes(run: Run, workspace: Workspace, tree_after: str) -> None:
    """The turn's diff, read bounded and stored; the workspace's latest tree (the patch)."""
    Workspace.objects.filter(pk=workspace.pk).update(tree=tree_after)
    run.tree_after = tree_after
    try:
        diff = diffs.record(run)
    except Exception:
        log.exception("Could not store the changes of run %s", run.uuid)
    else:
        if diff is not None:  # files it made can be linked from its reply
            file_links.add(workspace, [f["path"] for f in diff.files if f["status"] in ("A", "R")])
    repos.record_usage(workspace=workspace)  # its size, for the repository page


_arecord_changes = db_sync_to_async(_record_changes)


async def _agent_loop(turn: Turn) -> None:
    tool_schemas = turn.toolbox.schemas(workspace=turn.workspace is not None)
    while True:
        # Calls are saved with the step that asked for them, numbered from 1: a run that has
        # made no model call yet has none to run (and skips the query).
        if turn.run.steps:
            await _run_calls(turn, await _aopen_calls(turn.run))
        if turn.run.steps >= settings.AGENT_MAX_STEPS:
            raise CannotContinue(
                f"The assistant stopped after {turn.run.steps} steps, the most one reply may "
                "take. Send a message to let it go on."
            )
        if turn.tokens >= settings.AGENT_MAX_TOKENS:
            raise CannotContinue(
                f"The assistant stopped after using {turn.tokens:,} tokens, the most one reply "
                "may use. Send a message to let it go on."
            )
        requests = await _model_step(turn, tool_schemas)
        if not requests:
            return
        if tool_schemas is None and not _any_without_workspace(turn, requests):
            raise CannotContinue(
                "The model asked for a tool, but this conversation has no repository. Attach "
                "one to let the assistant work on code."
            )
        turn.saved_calls = True
        await _asave_calls(turn.run, requests, len(turn.text))


def _any_without_workspace(turn: Turn, requests: list[llm.ToolCallRequest]) -> bool:
    """Whether a requested tool is one of the team's that needs no repository, though none is
    offered now (all set to "never", say): its calls are then refused in words, one by one,
    rather than the turn failing as if it wanted a repository."""
    entries = [turn.toolbox.get(request.name) for request in requests]
    return any(entry is not None and not entry.needs_workspace for entry in entries)


def _open_calls(run: Run) -> list[ToolCall]:
    """The last step's calls that have not run yet, in order."""
    runnable = (ToolCallStatus.PENDING, ToolCallStatus.APPROVED)
    return list(
        ToolCall.objects.filter(run=run, step=run.steps, status__in=runnable)
        .select_related("decided_by")  # its events name who approved it
        .order_by("index")
    )


_aopen_calls = db_sync_to_async(_open_calls)


def _save_calls(run: Run, requests: list[llm.ToolCallRequest], offset: int) -> None:
    ToolCall.objects.bulk_create(
        ToolCall(
            run=run,
            step=run.steps,
            index=i,
            call_id=request.id[:200] or f"call_{run.steps}_{i}",
            name=request.name[:100],
            arguments=request.arguments,
            text_offset=offset,
        )
        for i, request in enumerate(requests)
    )


_asave_calls = db_sync_to_async(_save_calls)


async def _model_step(turn: Turn, tool_schemas: list[dict] | None) -> list[llm.ToolCallRequest]:
    """One call of the model: its text streams out; the tool calls it asks for come back."""
    if turn.workspace is not None and turn.context is None:
        turn.context = await db_sync_to_async(repo_context.build_safe)(workspace=turn.workspace)
    try:
        messages = await _aprompt_and_reserve(
            turn.run,
            turn.text,
            turn.workspace,
            turn.context,
            turn.toolbox.prompt_text(),
            turn.config.model,
        )
    except BudgetExceeded as exc:
        # Before each model call, atomically across every worker: the team's monthly budget
        # and the member's tokens for today must not be used up, and the call's estimate is
        # held (usage/budgets.py, through hooks.meter()). Used up, the turn ends in words and
        # the model is not called.
        raise CannotContinue(f"The assistant stopped: {exc}")
    requests: list[llm.ToolCallRequest] = []
    usage = llm.Usage()

    async def consume() -> None:
        async for item in llm.stream_chat(turn.config, messages, tools=tool_schemas):
            if isinstance(item, llm.Usage):
                usage.__dict__.update(item.__dict__)
            elif isinstance(item, llm.ToolCallRequest):
                requests.append(item)
            else:
                turn.parts.append(item)
                turn.publisher.add(item)

    started = time.monotonic()
    outcome = "ok"
    try:
        await _until_stopped(turn, consume(), streaming=True)
    except Stopped:
        outcome = "cancelled"
        raise
    except llm.LLMError as exc:
        outcome = exc.code
        raise
    except Exception:
        outcome = "internal"
        raise
    finally:
        usage.latency_ms = usage.latency_ms or int((time.monotonic() - started) * 1000)
        turn.tokens += usage.prompt_tokens + usage.completion_tokens
        await _acount_step(turn.run, turn.config.model, usage, outcome)
    return requests


def _count_step(run: Run, model: str, usage: llm.Usage, outcome: str) -> None:
    """After a model call, in one trip to a pool thread: the run's step count (saved first:
    a run with usage records has steps, _tokens_used relies on it), then the call metered."""
    _save(run, steps=run.steps + 1)
    usage_record(run=run, model=model, usage=usage, outcome=outcome)


_acount_step = db_sync_to_async(_count_step)


async def _until_stopped(turn: Turn, work, *, streaming: bool = False):
    """Await ``work`` while watching for Stop (cancelling it, which kills a sandboxed command)
    and sending heartbeats."""
    task = asyncio.ensure_future(work)
    publisher = turn.publisher
    while True:
        try:
            done, _ = await asyncio.wait({task}, timeout=CANCEL_POLL_SECONDS)
        except asyncio.CancelledError:
            # This waiter was cancelled (the execution is being torn down): the work must not
            # go on alone (a sandboxed command is killed when its task is cancelled).
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        if done:
            return task.result()
        if time.monotonic() - turn.last_beat >= HEARTBEAT_SECONDS:
            turn.last_beat = time.monotonic()
            try:
                await arun_heartbeat(turn.run)
            except Exception as exc:  # the database restarting: the reply goes on regardless
                log.warning("Could not record the run's heartbeat: %r", exc)
        # While deltas flow, each batch already looks at the cancel flag: poll only when quiet.
        if (streaming and publisher.cancel_seen()) or (
            not (streaming and publisher.sent_within(CANCEL_POLL_SECONDS))
            and await _cancel_requested(turn.run_id)
        ):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise Stopped


async def _cancel_requested(run_id: str) -> bool:
    """The shared cancel flag; unreadable (Redis restarting) counts as not set: the reply
    goes on, and a Stop pressed meanwhile is seen at the next poll once Redis is back."""
    try:
        return await streams.is_cancel_requested(run_id)
    except Exception as exc:
        log.warning("Could not read the cancel flag of run %s: %r", run_id, exc)
        return False


def _parse_arguments(text: str) -> tuple[object, str | None]:
    try:
        return json.loads(text or "{}"), None
    except json.JSONDecodeError as exc:  # the ValueError json.loads raises for bad JSON
        return None, f"The arguments were not valid JSON ({exc.msg} at character {exc.pos})."


async def _run_calls(turn: Turn, calls: list[ToolCall]) -> None:
    """One answer's calls, in the model's order. Consecutive read-only calls that need no
    approval run together (AGENT_PARALLEL_TOOLS at a time); any other call is a barrier: it
    starts once those before it have finished, and those after it wait for it. Results go
    back to the model in its order whatever order they finish in (the prompt is built from
    the rows, by index)."""
    batch: list[ToolCall] = []
    for call in calls:
        if _concurrent(turn, call):
            batch.append(call)
            continue
        await _run_batch(turn, batch)
        batch = []
        await _run_call(turn, call)
    await _run_batch(turn, batch)


def _concurrent(turn: Turn, call: ToolCall) -> bool:
    """Whether a call may run beside others: a read-only tool that runs without asking, with
    arguments that parse (anything else goes through _run_call alone)."""
    entry = turn.toolbox.get(call.name)
    if entry is None or not entry.tool.read_only or entry.policy != toolboxes.AUTO:
        return False
    return _parse_arguments(call.arguments)[1] is None


async def _run_batch(turn: Turn, calls: list[ToolCall]) -> None:
    """Read-only calls at once, at most AGENT_PARALLEL_TOOLS running. They start (row and
    tool.started event) in the model's order; each says tool.finished when it is done. Stop
    reaches every running call (each watches for it) and no further call starts."""
    if len(calls) < 2:
        for call in calls:
            await _run_call(turn, call)
        return
    slots = asyncio.Semaphore(max(1, settings.AGENT_PARALLEL_TOOLS))
    stopped = asyncio.Event()
    tasks: list[asyncio.Task] = []

    async def finish(call: ToolCall, args: object) -> None:
        try:
            await _execute_call(turn, call, args)
        except Stopped:
            stopped.set()
            raise
        finally:
            slots.release()

    try:
        for call in calls:
            await slots.acquire()
            if stopped.is_set() or await streams.is_cancel_requested(turn.run_id):
                slots.release()
                stopped.set()
                break
            args, _ = _parse_arguments(call.arguments)
            await _start_call(turn, call, Approval.NOT_NEEDED)
            tasks.append(asyncio.create_task(finish(call, args)))
    except BaseException:
        for task in tasks:
            task.cancel()  # torn down (or failed to start one): the others stop too
        raise
    finally:
        # Whatever happened here (a cancelled execution included), no call is left running.
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Stopped):
            raise outcome
    if stopped.is_set():
        raise Stopped


async def _run_call(turn: Turn, call: ToolCall) -> None:
    call.run = turn.run  # events and receivers read it: no query for each
    args, error = _parse_arguments(call.arguments)
    entry = turn.toolbox.get(call.name)
    if entry is not None and entry.policy == toolboxes.NEVER and error is None:
        # Switched off by the team's admins (after the model was offered it, or asked anyway):
        # never run, whatever was decided before.
        error = (
            f"The {call.name} tool is switched off for this team (policy: never), so it was "
            "not run. Do without it, or ask a team admin to change its policy."
        )
    approval = None
    if call.status == ToolCallStatus.PENDING and error is None:
        approval = _approval_for(turn, entry, call.name, args)
        if approval == Approval.ASKED:
            await _asave(call, status=ToolCallStatus.AWAITING, approval=approval)
            await turn.publisher.drain()
            await _publish_call(turn, "tool.awaiting", call)
            await _ahook(hooks.approval_needed, call=call)
            raise Parked
    await _start_call(turn, call, approval)
    if error is not None:
        await _end_call(turn, call, tools.ToolResult(ok=False, output=error))
        return
    await _execute_call(turn, call, args)


async def _start_call(turn: Turn, call: ToolCall, approval: str | None) -> None:
    """The call runs from now: its row says so and viewers get tool.started."""
    call.run = turn.run
    await turn.publisher.drain()
    changes: dict = {"status": ToolCallStatus.RUNNING, "started": timezone.now()}
    if approval is not None:
        changes["approval"] = approval
    await _asave(call, **changes)
    await _publish_call(turn, "tool.started", call)


async def _execute_call(turn: Turn, call: ToolCall, args: object) -> None:
    """Run a started call in the sandbox (watching for Stop), record and meter it."""
    ctx = _tool_context(turn.workspace)
    try:
        result = await _until_stopped(turn, turn.toolbox.execute(call.name, args, ctx))
    except Stopped:
        await _asave(
            call, status=ToolCallStatus.CANCELLED, output="Stopped.", finished=timezone.now()
        )
        await _publish_call(turn, "tool.finished", call)
        assert call.finished is not None and call.started is not None  # both saved
        ran_ms = int((call.finished - call.started).total_seconds() * 1000)
        await ausage_record_tool(run=turn.run, call=call, duration_ms=ran_ms, outcome="cancelled")
        raise
    await _end_call(turn, call, result)
    turn.changed = turn.changed or policy.changes_files(
        call.name, args, turn.toolbox.read_only(call.name)
    )
    await ausage_record_tool(run=turn.run, call=call, duration_ms=result.duration_ms)


async def _end_call(turn: Turn, call: ToolCall, result: tools.ToolResult) -> None:
    await _asave(
        call,
        status=ToolCallStatus.SUCCEEDED if result.ok else ToolCallStatus.FAILED,
        output=result.output,
        exit_code=result.exit_code,
        duration_ms=result.duration_ms,
        truncated=result.truncated,
        finished=timezone.now(),
    )
    await _publish_call(turn, "tool.finished", call)


def _approval_for(turn: Turn, entry: toolboxes.Entry | None, name: str, args: object) -> str:
    """Whether a call may run now: its tool's policy; run_command's is the allowlist's."""
    if entry is not None and entry.policy == toolboxes.ASK:
        return Approval.ASKED
    if entry is not None and entry.policy == toolboxes.AUTO:
        return Approval.NOT_NEEDED
    return policy.approval_for(
        name,
        args,
        turn.allowlist,
        guarded=turn.guarded,
        changed=turn.changed,
        registries_allowed=turn.run.conversation.team.commands_reach_registries,
    )


SETUP_PUBLISH_SECONDS = 0.5  # a running setup's output goes out at most this often


async def _prepare_environment(turn: Turn) -> None:
    """The workspace's environment before the agent's first command: the kept prepared tree
    when there is one for its key, else the repository's setup script run now, its output
    streamed to the conversation as a ``setup`` tool call (environment.py). A setup that fails
    is explained in its card and the turn goes on: the agent can still read and edit."""
    workspace = turn.workspace
    assert workspace is not None
    repo = workspace.repository
    image = repo.sandbox_image
    await asyncio.to_thread(environment.exclude_env_dirs, workspace)
    if not repo.setup_script.strip():
        if not workspace.environment and not repo.setup_proposal:
            with contextlib.suppress(Exception):  # a suggestion only: never fails the turn
                found = await environment.propose(workspace, image)
                if found:
                    text = f"# Proposed from the repository's {found['from']}\n{found['script']}"
                    await db_sync_to_async(_save)(repo, setup_proposal=text)
        if not workspace.environment:
            await _asave(workspace, environment="none")
        return
    if workspace.environment not in ("", "none"):
        return
    call = ToolCall(
        run=turn.run,
        step=0,
        index=0,
        call_id=f"setup_{turn.run.uuid.hex[:12]}",
        name=environment.CALL_NAME,
        arguments=json.dumps({"image": image}),
        text_offset=len(turn.text),
        status=ToolCallStatus.RUNNING,
        started=timezone.now(),
    )
    await db_sync_to_async(call.save)()
    call.run = turn.run
    await _publish_call(turn, "tool.started", call)
    started = time.monotonic()
    try:
        outcome = await _until_stopped(turn, _setup_or_reuse(turn, call, image))
    except Stopped:
        await _asave(
            call, status=ToolCallStatus.CANCELLED, output=call.output + "\nStopped.",
            finished=timezone.now(),
        )  # fmt: skip
        await _publish_call(turn, "tool.finished", call)
        raise
    except (sandbox.SandboxError, OSError, egress.EgressError) as exc:
        outcome = environment.Outcome(ran=True, ok=False, output=f"The setup could not run: {exc}")
    await _asave(
        call,
        status=ToolCallStatus.SUCCEEDED if outcome.ok else ToolCallStatus.FAILED,
        output=outcome.output,
        exit_code=outcome.exit_code,
        duration_ms=outcome.duration_ms or int((time.monotonic() - started) * 1000),
        truncated=outcome.truncated,
        finished=timezone.now(),
    )
    await _asave(workspace, environment=outcome.key if outcome.ok else f"failed:{outcome.key}"[:80])
    await _publish_call(turn, "tool.finished", call)


async def _setup_or_reuse(turn: Turn, call: ToolCall, image: str) -> environment.Outcome:
    workspace = turn.workspace
    assert workspace is not None
    repo = workspace.repository
    digest = await environment.manifest_digest(workspace, image)
    key = await asyncio.to_thread(environment.key_for, repo, image, digest)
    kept = environment.kept(repo, key)
    if kept is not None:
        begun = time.monotonic()
        try:
            how = await asyncio.to_thread(environment.restore, workspace, kept)
        except FileExistsError as exc:
            log.info("Not reusing the prepared tree: the repository has its own %s", exc)
        else:
            ms = int((time.monotonic() - begun) * 1000)
            return environment.Outcome(
                reused=True, key=key, duration_ms=ms, exit_code=0,
                output=f"Started from the prepared environment kept for this repository "
                f"({how} of {', '.join(environment.env_dirs())}; key {key[:12]}), without "
                "running the setup script. “Rebuild environment” on the repository page runs "
                "it again.",
            )  # fmt: skip
    chunks: list[bytes] = []
    last = [time.monotonic()]
    pending: set[asyncio.Task] = set()

    def on_output(chunk: bytes) -> None:
        chunks.append(chunk)
        if time.monotonic() - last[0] >= SETUP_PUBLISH_SECONDS:
            last[0] = time.monotonic()
            text = b"".join(chunks).decode("utf-8", "replace")[-20_000:]
            task = asyncio.ensure_future(_publish_setup_output(turn, call, text))
            pending.add(task)
            task.add_done_callback(pending.discard)

    outcome = await environment.run_setup(workspace, image, on_output)
    for task in list(pending):
        with contextlib.suppress(Exception):
            await task
    outcome.key = key
    if outcome.ok:
        try:
            await environment.capture(workspace, image, key)
        except (OSError, sandbox.SandboxError) as exc:
            log.warning("Could not keep the prepared tree of %s: %s", repo.pk, exc)
    return outcome


async def _publish_setup_output(turn: Turn, call: ToolCall, text: str) -> None:
    """A running setup's output so far, saved (a page loaded now shows it) and sent."""
    await _asave(call, output=text)
    await _publish_call(turn, "tool.started", call)


def _tool_context(workspace: Workspace | None) -> tools.ToolContext:
    limits = dataclasses.replace(SandboxLimits(), wall_seconds=settings.AGENT_COMMAND_SECONDS)
    if workspace is None:  # only tools that need no workspace are offered then
        return tools.ToolContext(tree=Path("/nonexistent"), limits=limits, has_workspace=False)
    return tools.ToolContext(
        tree=repos.workspace_path(workspace=workspace),
        git_dir=repos.git_dir(workspace=workspace),
        limits=limits,
        image=workspace.repository.sandbox_image,
        registries=workspace.repository.team.commands_reach_registries,
    )


def _finish_run(run: Run, *, ask_calls: bool, **fields) -> tuple[Message | None, bool]:
    """Save the reply and the final status; tell the run-ended hook; and, when asked, whether
    the run has tool calls (_announce_end) — in one trip to a pool thread. The hook's
    receivers only look and queue work (Slack's: a task, once committed, which the save is),
    and run_finish left the run as saved: they read it without fetching it again."""
    message = run_finish(run=run, **fields)
    if run.status not in FINISHED_STATUSES:  # finished by someone else first (a sweep)
        run.refresh_from_db()
    hooks.send(hooks.run_ended, run=run)
    return message, ask_calls and run.tool_calls.exists()


_afinish_run = db_sync_to_async(_finish_run)


_ahook = db_sync_to_async(hooks.send)


async def _publish_call(turn: Turn, kind: str, call: ToolCall) -> None:
    data = await db_sync_to_async(events.tool_call_data)(call)
    await events.publish(turn.conversation_id, {"t": kind, "run": turn.run_id, "call": data})


async def _park(turn: Turn) -> None:
    parked = await arun_park(run=turn.run, text=turn.text, seq=turn.publisher.seq)
    await streams.discard(turn.run_id)
    if parked:
        await events.publish(turn.conversation_id, {"t": "run.waiting", "run": turn.run_id})


async def _announce_end(turn: Turn, status, error, message, has_calls: bool = False) -> None:
    event_type = {
        RunStatus.SUCCEEDED: "run.completed",
        RunStatus.FAILED: "run.failed",
        RunStatus.CANCELLED: "run.cancelled",
    }[status]
    event = {
        "t": event_type,
        "run": turn.run_id,
        "error": error,
        "model": turn.config.label,
        "message": events.message_data(message) if message else None,
    }
    if turn.workspace is not None or has_calls:
        # Tool calls and the turn's diff are rendered from the database: viewers fetch the
        # finished bubble instead of building it from the event. (Without a repository a
        # turn has tool calls too when the team's tools need none: an MCP server's, say.)
        event["refresh"] = True
    await events.publish(turn.conversation_id, event)
