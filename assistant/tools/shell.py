"""run_command: a shell command in the sandbox (approval is the agent's business, not ours)."""

from __future__ import annotations

import contextlib
from typing import Any

from assistant import egress, sandbox

from .base import Tool, ToolContext, ToolResult, clip, params, sandbox_failure

# sh -c runs the command with stderr joined to stdout, in the order they were written.
# Python buffers stdout into a pipe (not stderr) until it exits, which put a script's errors
# before its prints: unbuffered, they come in the order they happened.
_COMBINED = 'PYTHONUNBUFFERED=1 exec /bin/sh -c "$1" 2>&1'
# The prepared environment's programs first (environment.py): `python -m pytest` and `npm test`
# use what the setup script installed in .venv and node_modules.
AGENT_PATH = f"{sandbox.WORKDIR}/.venv/bin:{sandbox.WORKDIR}/node_modules/.bin:{sandbox._PATH}"


async def run_command(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    command = args["command"]
    if not command.strip():
        return ToolResult(ok=False, output="The command is empty.")
    if "\0" in command:
        return ToolResult(ok=False, output="The command contains a NUL byte.")
    argv = ["/bin/sh", "-c", _COMBINED, "sh", command]
    notes = []
    async with contextlib.AsyncExitStack() as stack:
        channel, traffic = None, egress.Traffic()
        if args.get("registries") is True:
            if not ctx.registries:
                return ToolResult(
                    ok=False,
                    output="Not run: this team does not let commands reach the package "
                    "registries (an admin can allow it in the team's settings). Run it "
                    "without registries=true, or ask a teammate to add it to the setup script.",
                )
            if why := egress.forwarder_missing(sandbox._system_root(ctx.image)):
                notes.append(f"[{why}]")
            else:
                channel, traffic = await stack.enter_async_context(egress.channel())
                argv = egress.wrap(argv)
        result = await sandbox.run(
            argv,
            worktree=ctx.tree,
            git_dir=ctx.git_dir,
            limits=ctx.limits,
            image=ctx.image,
            env={"PATH": AGENT_PATH, **(egress.proxy_env() if channel is not None else {})},
            egress=channel,
        )
    output = result.stdout + result.stderr
    if refused := traffic.refusals_sentence():
        notes.append(f"[{refused}]")
    if stopped := sandbox_failure(result, ctx.limits):
        notes.append(f"[the command was {stopped}]")
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
            registries={
                "type": "boolean",
                "description": (
                    "true: the command may reach the package registries (pip, npm install) "
                    "through the egress proxy, if the team allows it; a teammate must approve "
                    "it every time. Leave out otherwise."
                ),
            },
        ),
        read_only=False,
        run=run_command,
    ),
]
