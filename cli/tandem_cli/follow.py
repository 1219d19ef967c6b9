"""One turn: send a message and follow its run on the event stream until it ends — text as it
comes, tool calls as they start and finish, approvals asked inline, Ctrl-C to stop it."""

from __future__ import annotations

from dataclasses import dataclass

from .api import Api, Event, EventStream
from .errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_LIMIT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_WAITING,
    ApiFailure,
    CliError,
)
from .output import Renderer, tool_detail

FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Result:
    run_id: str
    status: str  # succeeded, failed, cancelled, waiting
    text: str
    error: str = ""
    exit_code: int = EXIT_OK
    duplicates: int = 0  # deltas seen twice and dropped (never shown twice)
    gaps: int = 0  # deltas whose predecessor never came (should stay 0)
    reconnects: int = 0


def run_of(data) -> str | None:
    """The run an event is about (its payloads name it in a few ways)."""
    if not isinstance(data, dict):
        return None
    run = data.get("run")
    if isinstance(run, dict):
        return run.get("id")
    if isinstance(run, str):
        return run
    call = data.get("call")
    if isinstance(call, dict):
        return call.get("run")
    return None


class Turn:
    def __init__(
        self,
        api: Api,
        conversation_id: str,
        run_id: str,
        renderer: Renderer,
        *,
        interactive: bool,
        wait: bool = False,
    ) -> None:
        self.api = api
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.renderer = renderer
        self.interactive = interactive
        self.wait = wait
        self.text = ""
        self.seq = 0
        self.duplicates = 0
        self.gaps = 0
        self.stopping = False
        self.after_reset = False
        self.asked: set[str] = set()

    def result(self, status: str, error: str = "", code: int = EXIT_OK) -> Result:
        self.renderer.finish()
        return Result(self.run_id, status, self.text, error, code, self.duplicates, self.gaps)

    def show(self, text: str) -> None:
        """Bring what is shown up to ``text`` (a snapshot, the saved reply)."""
        if text.startswith(self.text):
            self.renderer.text(text[len(self.text) :])
            self.text = text

    def handle(self, event: Event) -> Result | None:
        kind, data = event.event, event.data
        if kind in ("snapshot", "reset"):
            self.renderer.event(event)
        if kind == "snapshot":
            runs = {run["id"]: run for run in (data or {}).get("runs", [])}
            mine = runs.get(self.run_id)
            if mine is not None:
                self.show(mine.get("text") or "")
                self.seq = max(self.seq, int(mine.get("seq") or 0))
            elif self.after_reset:
                return self.catch_up()
            self.after_reset = False
            return None
        if kind == "reset":
            self.after_reset = True
            self.renderer.note("(The stream lost its place; catching up.)")
            return None
        if kind == "conversation.deleted":
            raise CliError("The conversation was deleted.", EXIT_NOT_FOUND)
        if run_of(data) != self.run_id:
            return None
        self.renderer.event(event)
        if kind == "delta":
            seq = int(data.get("seq") or 0)
            if seq <= self.seq:
                self.duplicates += 1
                return None
            if seq > self.seq + 1:
                self.gaps += 1
            self.seq = seq
            self.text += data.get("text", "")
            self.renderer.text(data.get("text", ""))
        elif kind in ("tool.started", "tool.finished", "tool.decided"):
            self.renderer.tool(kind.split(".", 1)[1], data["call"])
        elif kind == "tool.awaiting":
            self.renderer.tool("awaiting", data["call"])
            self.approval(data["call"])
        elif kind == "run.waiting" and not self.interactive and not self.wait:
            return self.result("waiting", "", EXIT_WAITING)
        elif kind in ("run.completed", "run.failed", "run.cancelled"):
            return self.ended(kind.split(".", 1)[1], data)
        return None

    def ended(self, kind: str, data: dict) -> Result:
        message = data.get("message") or {}
        if message.get("content"):
            self.show(message["content"])
        error = data.get("error") or ""
        if kind == "completed":
            return self.result("succeeded")
        if kind == "cancelled":
            if self.stopping:
                self.renderer.note("Stopped.")
                return self.result("cancelled", "", EXIT_INTERRUPTED)
            self.renderer.note("The reply was stopped (by someone else, or the server).")
            return self.result("cancelled", "", EXIT_ERROR)
        self.renderer.note(f"The reply failed: {error or 'no reason given'}")
        limit = "budget" in error.lower() or "tokens for today" in error.lower()
        return self.result("failed", error, EXIT_LIMIT if limit else EXIT_ERROR)

    def catch_up(self) -> Result | None:
        """After a reset, the run is no longer in flight: take its end from the database."""
        run = self.api.get(f"runs/{self.run_id}")
        if run["status"] not in FINISHED:
            return None
        found = self.api.get(f"conversations/{self.conversation_id}")
        message = next((m for m in found["messages"] if m["id"] == run.get("message")), None)
        kind = {"succeeded": "completed"}.get(run["status"], run["status"])
        return self.ended(kind, {"message": message, "error": run.get("error")})

    def approval(self, call: dict) -> None:
        call_id = call["id"]
        if call_id in self.asked:
            return
        self.asked.add(call_id)
        if not self.interactive:
            self.renderer.note(
                f"The command waits for approval: {tool_detail(call)}\n"
                f"  approve: tandem approve {call_id}\n"
                f"  deny:    tandem deny {call_id}"
            )
            return
        while True:
            answer = self.renderer.ask("Approve? [y/N/always] ").strip().lower()
            decision = {"y": "approve", "yes": "approve", "always": "always", "a": "always"}.get(
                answer, "deny"
            )
            try:
                self.api.post(f"tool-calls/{call_id}/decision", {"decision": decision})
                return
            except ApiFailure as exc:
                self.renderer.note(exc.message)
                if exc.api_code != "admins_only":
                    return  # decided by someone else meanwhile, or the run stopped

    def stop(self) -> None:
        """Ctrl-C: ask the server to stop the run, as the page's Stop button does."""
        self.stopping = True
        self.renderer.note("Stopping the reply…")
        try:
            self.api.post(f"runs/{self.run_id}/cancel")
        except ApiFailure as exc:
            if exc.status != 409:  # 409: it had finished already
                raise


def follow(stream: EventStream, turn: Turn) -> Result:
    """Feed the stream's events to the turn until the run ends. A first Ctrl-C stops the run
    (and waits for the server to say so); a second one leaves at once."""
    events = iter(stream)
    while True:
        try:
            try:
                event = next(events)
            except StopIteration:
                raise CliError("The event stream ended before the reply did.")
            done = turn.handle(event)
        except KeyboardInterrupt:
            if turn.stopping:
                raise
            turn.renderer.pause()
            turn.stop()
            # The interrupted read ended the stream's generator: go on from the last event.
            stream = EventStream(stream.api, stream.conversation_id, stream.last_id)
            events = iter(stream)
            continue
        if done is not None:
            done.reconnects = stream.reconnects
            return done


def send(
    api: Api,
    conversation_id: str,
    content: str,
    renderer: Renderer,
    *,
    interactive: bool,
    wait: bool = False,
) -> Result:
    """Post a message and follow its run. The stream opens first (its snapshot marks the
    position), so not even the run's first event can be missed."""
    stream = api.events(conversation_id)
    try:
        events = iter(stream)
        first = next(events)
        if first.event != "snapshot":
            raise CliError(f"The event stream began with {first.event}, not a snapshot.")
        sent = api.post(f"conversations/{conversation_id}/messages", {"content": content})
        renderer.event(Event("message.sent", sent))
        turn = Turn(
            api,
            conversation_id,
            sent["run"]["id"],
            renderer,
            interactive=interactive,
            wait=wait,
        )
        return follow(stream, turn)
    finally:
        stream.close()
