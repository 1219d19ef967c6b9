"""The tools of one run: the built-in ones plus what the team's extensions add.

The agent used to offer one fixed registry. Teams add their own tools (entry-point plugins, MCP
servers), each under a policy their admins choose, so the set is built per run execution:
providers registered by apps (``register_provider``, from their ``AppConfig.ready``) are asked
for their entries concurrently, and whatever they start for the run (an MCP server's process, a
session) is stopped by :meth:`Toolbox.aclose` when the execution ends — parked, finished,
stopped or crashed.

A provider that fails adds nothing: the run goes on with the rest, and the model is told in a
note why a tool it may expect is missing. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from . import TOOLS, Tool, ToolContext, ToolResult, execute, validate

log = logging.getLogger(__name__)

# What happens before a call runs:
AUTO = "auto"  # it runs
ASK = "ask"  # every call waits for a member's approval, like a command off the allowlist
NEVER = "never"  # refused in words, never run
COMMANDS = "commands"  # run_command's rules: the team's allowlist, guarded entries
POLICIES = (AUTO, ASK, NEVER, COMMANDS)
BUILTIN = "builtin"
PROVIDER_SECONDS = 30.0  # a provider that takes longer is left out of this run, said in a note


@dataclass(frozen=True)
class Entry:
    tool: Tool
    source: str = BUILTIN  # "builtin", "plugin:<name>", "mcp:<server>"
    policy: str = AUTO
    needs_workspace: bool = True  # offered only when the conversation has a repository

    @property
    def name(self) -> str:
        return self.tool.name


@dataclass
class ToolboxRequest:
    """What a provider may read to decide its entries. ``workspace`` is None when the
    conversation has no repository."""

    team: Any
    conversation: Any = None
    run: Any = None
    workspace: Any = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Have ``closer`` awaited when the run's execution ends (its resources stop)."""
        self.closers.append(closer)

    def add_prompt(self, section: str) -> None:
        """A section for the system prompt: when to use the provider's tools."""
        self.prompts.append(section.strip())


Provider = Callable[[ToolboxRequest], Awaitable[list[Entry]]]
# A provider that only reads the database (synchronous): every reader is called in one trip to
# a pool thread, where each async provider that reads would make a trip of its own — each trip
# waits for a thread and a pooled connection before the run's first model call.
Reader = Callable[[ToolboxRequest], list[Entry]]
_providers: list[tuple[Provider | Reader, bool]] = []  # in registration order, with is-reader


def register_provider(provider: Provider) -> Provider:
    """Add a source of tools (idempotent); usable as a decorator."""
    if (provider, False) not in _providers:
        _providers.append((provider, False))
    return provider


def register_reader(reader: Reader) -> Reader:
    """Add a synchronous source of tools that reads the database (idempotent)."""
    if (reader, True) not in _providers:
        _providers.append((reader, True))
    return reader


def unregister_provider(provider: Provider | Reader) -> None:
    _providers[:] = [(p, r) for p, r in _providers if p != provider]


def builtin_entries() -> list[Entry]:
    return [
        Entry(tool, BUILTIN, COMMANDS if tool.name == "run_command" else AUTO)
        for tool in TOOLS.values()
    ]


class Toolbox:
    def __init__(
        self,
        entries: list[Entry],
        *,
        notes: list[str] | None = None,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
        prompts: list[str] | None = None,
    ) -> None:
        self.entries: dict[str, Entry] = {}
        self.notes = list(notes or [])
        self.prompts = [p for p in prompts or [] if p]
        for entry in entries:
            if entry.policy not in POLICIES:
                raise ValueError(f"unknown tool policy {entry.policy!r} for {entry.name}")
            if entry.name in self.entries:
                # The first one stays: a plugin can't shadow a built-in tool or another's.
                self.notes.append(
                    f"The tool {entry.name} of {entry.source} was left out: "
                    f"{self.entries[entry.name].source} has a tool of that name."
                )
                continue
            self.entries[entry.name] = entry
        self._closers = list(closers or [])

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def prompt_text(self) -> str:
        """What the system prompt adds for these tools: providers' sections, then notes."""
        return "\n\n".join([*self.prompts, *self.notes])

    def offered(self, *, workspace: bool) -> list[Entry]:
        """The entries the model may call; "never" tools are not offered at all."""
        return [
            e
            for e in self.entries.values()
            if e.policy != NEVER and (workspace or not e.needs_workspace)
        ]

    def schemas(self, *, workspace: bool) -> list[dict[str, Any]] | None:
        """Function-calling schemas, or None when there is nothing to offer."""
        return [e.tool.schema() for e in self.offered(workspace=workspace)] or None

    def read_only(self, name: str) -> bool:
        entry = self.entries.get(name)
        return bool(entry and entry.tool.read_only)

    async def execute(self, name: str, args: Any, ctx: ToolContext) -> ToolResult:
        """Run a call; a result in every case but cancellation (policy is the agent's)."""
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(self.entries) or "none"
            return ToolResult(ok=False, output=f"Unknown tool “{name}”. Available tools: {known}.")
        if entry.needs_workspace and not ctx.has_workspace:
            return ToolResult(
                ok=False,
                output=f"The {name} tool works on a repository, and this conversation has none.",
            )
        if entry.source == BUILTIN:
            return await execute(name, args, ctx)
        if error := validate(entry.tool, args):
            return ToolResult(ok=False, output=error)
        args = {key: value for key, value in args.items() if value is not None}
        started = time.monotonic()
        try:
            result = await entry.tool.run(ctx, args)
        except Exception as exc:
            log.exception("tool %s (%s) failed", name, entry.source)
            result = ToolResult(ok=False, output=f"The {name} tool failed: {exc}"[:2_000])
        if not result.duration_ms:
            result.duration_ms = int((time.monotonic() - started) * 1000)
        return result

    async def aclose(self) -> None:
        """Stop what the providers started for this run; errors are logged, never raised."""
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                await closer()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Stopping a tool provider's resources failed")


async def _ask(provider: Provider, request: ToolboxRequest) -> list[Entry] | str:
    try:
        return await asyncio.wait_for(provider(request), PROVIDER_SECONDS)
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        return f"{_name(provider)} took longer than {PROVIDER_SECONDS:g} s"
    except Exception as exc:
        log.exception("Tool provider %r failed", provider)
        return str(exc) or type(exc).__name__


def _name(provider: Callable[..., Any]) -> str:
    return str(getattr(provider, "__qualname__", provider))


Answer = list[Entry] | str  # a provider's entries, or why it has none


def _read(readers: list[Reader], request: ToolboxRequest) -> list[Answer]:
    answers: list[Answer] = []
    for reader in readers:
        try:
            answers.append(reader(request))
        except Exception as exc:
            log.exception("Tool provider %r failed", reader)
            answers.append(str(exc) or type(exc).__name__)
    return answers


def read(request: ToolboxRequest) -> dict[Reader, Answer]:
    """Ask every reader now, in this thread (one that may query the database): for a caller
    already on a pool thread for other reads (the agent's claim), so that build() makes no
    trip of its own for them. Each reader that fails answers why, as in build()."""
    readers = [cast(Reader, p) for p, is_reader in list(_providers) if is_reader]
    return dict(zip(readers, _read(readers, request), strict=True))


async def _ask_readers(readers: list[Reader], request: ToolboxRequest) -> list[Answer]:
    # channels' database_sync_to_async on a pool thread is config.db.db_sync_to_async, which
    # this package may not import (it gives the thread's connection back after the call).
    from channels.db import database_sync_to_async

    try:
        return await asyncio.wait_for(
            database_sync_to_async(_read, thread_sensitive=False)(readers, request),
            PROVIDER_SECONDS,
        )
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        return [f"{_name(r)} took longer than {PROVIDER_SECONDS:g} s" for r in readers]
    except Exception as exc:  # the trip itself failed (no connection): none of them answered
        log.exception("Tool providers %r failed", readers)
        return [str(exc) or type(exc).__name__ for _ in readers]


async def build(
    request: ToolboxRequest, *, already_read: dict[Reader, Answer] | None = None
) -> Toolbox:
    """The built-in tools and every registered provider's, asked concurrently (the readers
    together, in one trip to a thread, unless ``already_read`` has their answers, from read()
    with the same request); their entries in the order they were registered."""
    providers = list(_providers)
    known = dict(already_read or {})
    readers = [cast(Reader, p) for p, is_reader in providers if is_reader and p not in known]
    asked = [_ask(cast(Provider, p), request) for p, is_reader in providers if not is_reader]
    if readers:
        read_task = asyncio.ensure_future(_ask_readers(readers, request))
        try:
            told = await asyncio.gather(*asked)
        except BaseException:  # cancelled: the readers' trip is not awaited by anyone now
            read_task.cancel()
            raise
        known.update(zip(readers, await read_task, strict=True))
    else:
        told = await asyncio.gather(*asked)
    async_answers = iter(told)
    answers = [
        known[cast(Reader, p)] if is_reader else next(async_answers) for p, is_reader in providers
    ]
    entries = builtin_entries()
    notes: list[str] = []
    for answer in answers:
        if isinstance(answer, str):
            notes.append(f"Some of the team's tools are unavailable in this reply: {answer}.")
        else:
            entries.extend(answer)
    return Toolbox(entries, notes=notes, closers=request.closers, prompts=request.prompts)
