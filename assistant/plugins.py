"""Tool plugins: what a plugin imports, and how Tandem finds the installed ones.

A plugin is a Python distribution with an entry point in the group ``tandem.tools`` naming a
:class:`Plugin`: its tools (name, description, JSON schema of the arguments, read-only or not)
and a section for the system prompt. A tool runs in one of two ways, both through the sandbox:

- :func:`sandbox_tool`: a command (argv) in the conversation's sandbox, the workspace mounted at
  ``/workspace`` as for ``run_command``, plus read-only mounts under ``/opt/`` of files the plugin
  ships (a static binary, say); ``parse`` turns what it printed into the result.
- :func:`worker_tool`: a pure function in the worker of files read *through the sandbox*
  (``Workspace.read_files``): the server never opens the agent's tree with its own rights,
  because a process of the agent may swap a file for a symlink while it reads.

The plugin never gets the tree's path, only a :class:`Workspace` whose every method runs in the
sandbox. Discovery (:func:`discover`) never raises: a plugin that fails to import is listed with
its error and offers no tools. docs/plugins.md has a worked example.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant import sandbox
from assistant.tools.base import (
    HELPER_SOURCE,
    Tool,
    ToolContext,
    ToolResult,
    clip,
    sandbox_failure,
)
from assistant.tools.sandbox_helper import GIT

__all__ = [
    "GROUP",
    "CommandResult",
    "Files",
    "Installed",
    "Output",
    "Plugin",
    "PluginTool",
    "Workspace",
    "discover",
    "sandbox_tool",
    "worker_tool",
]

GROUP = "tandem.tools"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """What a tool answers the model: whether it worked, and the text (capped by Tandem)."""

    ok: bool
    text: str


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None  # None when the sandbox stopped it
    stdout: str
    stderr: str
    stopped: str = ""  # why the sandbox stopped it, in words ("" when it ended by itself)
    truncated: bool = False  # it printed more than the sandbox keeps: the output is cut


@dataclass(frozen=True)
class Files:
    """Text files read in the sandbox: path (relative to the root) -> content."""

    files: dict[str, str]
    skipped: list[str] = field(default_factory=list)  # over the caps, or symlinks out


class WorkspaceError(Exception):
    """The workspace could not be read (the sandbox said why); the tool's call fails in words."""


class Workspace:
    """The conversation's tree as a plugin sees it: every method runs in the sandbox."""

    def __init__(self, ctx: ToolContext | None) -> None:
        self._ctx = ctx

    def _context(self) -> ToolContext:
        if self._ctx is None:
            raise WorkspaceError("this conversation has no repository to work on")
        return self._ctx

    async def run(
        self,
        argv: Sequence[str],
        *,
        binds: Mapping[str, Path] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """``argv`` in the sandbox at ``/workspace``, no network; ``binds``: read-only mounts
        of the plugin's own files at paths under ``/opt/``."""
        ctx = self._context()
        result = await sandbox.run(
            argv,
            worktree=ctx.tree,
            git_dir=ctx.git_dir,
            limits=ctx.limits,
            stdin=stdin,
            image=ctx.image,
            ro_binds=binds,
        )
        return CommandResult(
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            stopped=sandbox_failure(result, ctx.limits) or "",
            truncated=result.truncated,
        )

    async def git(self, *args: str) -> CommandResult:
        """git with Tandem's hardening (no hooks, pager, fsmonitor...); .git is read-only."""
        return await self.run([*GIT, *args])

    async def read_files(
        self,
        patterns: Sequence[str],
        *,
        max_files: int = 200,
        max_bytes: int = 5_000_000,
        max_file_bytes: int = 1_000_000,
    ) -> Files:
        """Text files matching any glob (``**/*.yaml``, ``Dockerfile``), as git sees the tree:
        tracked and new files that .gitignore keeps. Binary files are left out; files past the
        caps (``max_bytes`` counts the text as JSON-encoded) are named in ``skipped``."""
        ctx = self._context()
        request = {
            "op": "read_files",
            "args": {
                "patterns": list(patterns),
                "max_files": max_files,
                "max_bytes": max_bytes,
                "max_file_bytes": max_file_bytes,
            },
        }
        # The reply carries the files (max_bytes as JSON, see the helper), plus names.
        output = max(ctx.limits.max_output_bytes, max_bytes + 1_000_000)
        result = await sandbox.run(
            ["python3", "-I", "-S", "-c", HELPER_SOURCE],
            worktree=ctx.tree,
            git_dir=ctx.git_dir,
            limits=dataclasses.replace(ctx.limits, max_output_bytes=output),
            stdin=json.dumps(request).encode(),
            image=ctx.image,
        )
        try:
            reply = json.loads(result.stdout)
            files = {f["path"]: f["text"] for f in reply.get("files") or []}
        except (ValueError, TypeError, KeyError):
            why = sandbox_failure(result, ctx.limits) or f"exit code {result.exit_code}"
            raise WorkspaceError(f"the files could not be read ({why})") from None
        if not reply.get("ok"):
            raise WorkspaceError(str(reply.get("output") or "the files could not be read"))
        return Files(files=files, skipped=list(reply.get("skipped") or []))


RunFunction = Callable[[Workspace, dict[str, Any]], Awaitable[Output]]


@dataclass(frozen=True)
class PluginTool:
    name: str  # lower case, digits and _; unique among every tool the agent gets
    description: str  # for the model: what it does and when to use it
    parameters: dict[str, Any]  # JSON schema of the arguments (an "object")
    read_only: bool  # False: it changes files (a member approves each call by default)
    run: RunFunction
    needs_workspace: bool = True  # False: offered also in conversations without a repository


@dataclass(frozen=True)
class Plugin:
    name: str  # short id, e.g. "devops"; what the team switch stores
    title: str
    description: str
    tools: Sequence[PluginTool]
    prompt: str = ""  # a section of the system prompt, added when the plugin is on for a team


def sandbox_tool(
    *,
    name: str,
    description: str,
    parameters: dict[str, Any],
    argv: Callable[[dict[str, Any]], Sequence[str]],
    parse: Callable[[CommandResult, dict[str, Any]], Output],
    binds: Callable[[], Mapping[str, Path]] | None = None,
    read_only: bool = True,
) -> PluginTool:
    """A tool that runs ``argv(args)`` in the sandbox; ``binds()`` (looked up per call, so a
    missing binary is an error in words, not at import) are read-only mounts under /opt/."""

    async def run(ws: Workspace, args: dict[str, Any]) -> Output:
        result = await ws.run(list(argv(args)), binds=binds() if binds else None)
        return parse(result, args)

    return PluginTool(name, description, parameters, read_only, run)


def worker_tool(
    *,
    name: str,
    description: str,
    parameters: dict[str, Any],
    files: Callable[[dict[str, Any]], Sequence[str]],
    function: Callable[[Files, dict[str, Any]], Output],
    read_only: bool = True,
) -> PluginTool:
    """A tool whose work is ``function(files, args)`` in the worker (in a thread: it may be
    CPU-bound), over the files matching ``files(args)`` read through the sandbox."""

    async def run(ws: Workspace, args: dict[str, Any]) -> Output:
        gathered = await ws.read_files(files(args))
        return await asyncio.to_thread(function, gathered, args)

    return PluginTool(name, description, parameters, read_only, run)


# --- Discovery ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """One entry point of the group: the plugin, or why it could not be loaded."""

    entry_point: str  # its name in the group
    value: str  # module:attribute
    distribution: str
    version: str
    plugin: Plugin | None
    error: str = ""

    @property
    def name(self) -> str:
        return self.plugin.name if self.plugin else self.entry_point


_lock = threading.Lock()
_cache: list[Installed] | None = None


def discover(*, refresh: bool = False) -> list[Installed]:
    """Every installed plugin (loaded once per process), sorted by name. Never raises."""
    global _cache
    with _lock:
        if _cache is None or refresh:
            _cache = sorted(_load_all(), key=lambda p: p.name)
        return list(_cache)


def loaded() -> dict[str, Plugin]:
    """The plugins that loaded, by name."""
    return {p.plugin.name: p.plugin for p in discover() if p.plugin is not None}


def _load_all() -> list[Installed]:
    found: list[Installed] = []
    names: set[str] = set()
    tool_names: set[str] = set()
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        try:
            plugin = _load(ep)
            tools = {t.name for t in plugin.tools}
            if plugin.name in names:
                raise ValueError(f"another installed plugin is also called “{plugin.name}”")
            if clash := sorted(tools & tool_names):
                raise ValueError(f"another plugin has tools of the same name: {', '.join(clash)}")
        except Exception as exc:  # any error of a plugin's import is its own, never start-up's
            log.warning("Tool plugin %s (%s) could not be loaded: %s", ep.name, ep.value, exc)
            error = f"{type(exc).__name__}: {exc}"
            found.append(Installed(ep.name, ep.value, dist, version, None, error))
            continue
        names.add(plugin.name)
        tool_names |= tools
        found.append(Installed(ep.name, ep.value, dist, version, plugin))
    return found


def _load(ep: importlib.metadata.EntryPoint) -> Plugin:
    obj = ep.load()
    plugin = obj() if callable(obj) and not isinstance(obj, Plugin) else obj
    if not isinstance(plugin, Plugin):
        raise TypeError(f"{ep.value} is a {type(plugin).__name__}, not an assistant.plugins.Plugin")
    if not NAME_RE.match(plugin.name):
        raise ValueError(f"the plugin name “{plugin.name}” must be lower case letters, digits, _")
    seen: set[str] = set()
    for tool in plugin.tools:
        if not isinstance(tool, PluginTool):
            raise TypeError(f"{plugin.name}: {tool!r} is not a PluginTool")
        if not NAME_RE.match(tool.name) or tool.name in seen:
            raise ValueError(f"{plugin.name}: bad or repeated tool name “{tool.name}”")
        if tool.parameters.get("type") != "object":
            raise ValueError(f"{plugin.name}: the parameters of {tool.name} must be an object")
        seen.add(tool.name)
    return plugin


# --- As the agent's tools -----------------------------------------------------------------------


def as_tool(tool: PluginTool) -> Tool:
    """The plugin's tool as one of the agent's (``assistant.tools.base.Tool``)."""

    async def run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        try:
            output = await tool.run(Workspace(ctx if ctx.has_workspace else None), args)
        except WorkspaceError as exc:
            return ToolResult(ok=False, output=f"The {tool.name} tool could not run: {exc}")
        text, clipped = clip(output.text)
        return ToolResult(ok=output.ok, output=text or "(no output)", truncated=clipped)

    return Tool(tool.name, tool.description, tool.parameters, tool.read_only, run)
