"""run_command: a shell command in the sandbox (approval is the agent's business, not ours)."""

from __future__ import annotations

from typing import Any

from assistant import sandbox

from .base import Tool, ToolContext, ToolResult, clip, params, sandbox_failure

# sh -c runs the command with stderr joined to stdout, in the order they were written.
# Python buffers stdout into a pipe (not stderr) until it exits, which put a script's errors
# before its prints: unbuffered, they come in the order they happened.
_COMBINED = 'PYTHONUNBUFFERED=1 exec /bin/sh -c "$1" 2>&1'


async def run_command(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    command = args["command"]
    if not command.strip():
        return ToolResult(ok=False, output="The command is empty.")
    if "\0" in command:
        return ToolResult(ok=False, output="The command contains a NUL byte.")
    result = await sandbox.run(
        ["/bin/sh", "-c", _COMBINED, "sh", command],
        worktree=ctx.tree,
        git_dir=ctx.git_dir,
        limits=ctx.limits,
        image=ctx.image,
    )
    output = result.stdout + result.stderr
    notes = []
    if why := sandbox_failure(result, ctx.limits):
        notes.append(f"[the command was {why}]")
    elif result.exit_code:
        notes.append(f"[exit code {result.exit_code}]")
    output, clipped = clip(output)
    if notes:
        output = (output.rstrip("\n") + "\n" if output else "") + "\n".join(notes)
    return ToolResult(
        ok=result.ok,
        output=output or "(no output)",
        exit_code=result.exit_code,
        duration_ms=result.duration_ms,
        truncated=result.truncated or clipped,
    )


TOOLS = [
    Tool(
        name="run_command",
        description=(
            "Run a shell command (/bin/sh -c) in the repository root, e.g. running tests. "
            "No network. Returns the exit code and the combined stdout and stderr."
        ),
        parameters=params(
            ["command"],
            command={"type": "string", "description": "The shell command"},
        ),
        read_only=False,
        run=run_command,
    ),
]
