"""The pieces every tool family shares: the context, the result, the tool record, and how a tool
runs something in the sandbox."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant import sandbox
from assistant.sandbox import SandboxLimits, SandboxResult

HELPER_SOURCE = (Path(__file__).with_name("sandbox_helper.py")).read_text()
MAX_OUTPUT_CHARS = 30_000  # what one tool result may put in front of the model


@dataclass(frozen=True)
class ToolContext:
    tree: Path  # the workspace's working tree (mounted at /workspace)
    git_dir: Path | None = None  # its git directory, mounted read-only at /workspace/.git
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    image: str | None = None  # the repository's sandbox image (``images``); None: the host's
    # False for a conversation without a repository: ``tree`` names nothing then, and only
    # tools that need no workspace (a web fetch, a remote MCP server) are offered.
    has_workspace: bool = True
    # The team lets commands ask for the package registries (Team.commands_reach_registries).
    registries: bool = False


@dataclass
class ToolResult:
    ok: bool
    output: str
    exit_code: int | None = None
    duration_ms: int = 0
    truncated: bool = False
    changed_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments (an "object")
    read_only: bool
    run: Callable[[ToolContext, dict[str, Any]], Awaitable[ToolResult]]

    def schema(self) -> dict[str, Any]:
        """OpenAI function-calling format."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def params(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def clip(text: str, limit: int = MAX_OUTPUT_CHARS) -> tuple[str, bool]:
    """At most ``limit`` characters: the first third and the last two thirds, with a note."""
    if len(text) <= limit:
        return text, False
    head, tail = limit // 3, limit - limit // 3
    cut = len(text) - head - tail
    note = f"\n[… {cut} characters cut from the middle of the output …]\n"
    return text[:head] + note + text[-tail:], True


def sandbox_failure(result: SandboxResult, limits: SandboxLimits) -> str | None:
    """Words for a run the sandbox stopped, or None."""
    return {
        "timeout": f"stopped: it ran longer than {limits.wall_seconds:g} s",
        "output": "stopped: it printed far more output than can be kept",
        "cancelled": "stopped",
        "cpu": f"stopped: it used more than {limits.cpu_seconds} s of CPU",
        "file_size": f"stopped: it tried to write a file larger than {limits.max_file_mb} MB",
        "memory": (
            f"stopped: its processes together used more than the {limits.total_memory_mb} MB "
            "of memory one command may have (the kernel's out-of-memory killer ended it)"
        ),
    }.get(result.killed_reason)


async def run_helper(ctx: ToolContext, op: str, args: dict[str, Any]) -> ToolResult:
    """Run one operation of ``sandbox_helper`` in the sandbox; its reply as a ToolResult."""
    request = json.dumps({"op": op, "args": args}).encode()
    result = await sandbox.run(
        ["python3", "-I", "-S", "-c", HELPER_SOURCE],
        worktree=ctx.tree,
        git_dir=ctx.git_dir,
        limits=ctx.limits,
        stdin=request,
        image=ctx.image,
    )
    try:
        reply = json.loads(result.stdout)
        if not isinstance(reply, dict):
            raise ValueError
    except ValueError:
        why = sandbox_failure(result, ctx.limits) or f"exit code {result.exit_code}"
        detail = result.stderr.strip()[-2000:]
        return ToolResult(
            ok=False,
            output=f"The {op} tool failed ({why}).{' ' + detail if detail else ''}",
            duration_ms=result.duration_ms,
        )
    output, clipped = clip(str(reply.get("output", "")))
    return ToolResult(
        ok=bool(reply.get("ok")),
        output=output,
        duration_ms=result.duration_ms,
        truncated=bool(reply.get("truncated")) or clipped,
        changed_files=list(reply.get("changed") or []),
    )
