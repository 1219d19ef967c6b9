"""git_status, git_diff: git in the sandbox, against the workspace's read-only git directory."""

from __future__ import annotations

from typing import Any

from .base import Tool, ToolContext, ToolResult, params, run_helper


async def git_status(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return await run_helper(ctx, "git_status", args)


async def git_diff(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return await run_helper(ctx, "git_diff", args)


TOOLS = [
    Tool(
        name="git_status",
        description=(
            "Show the branch and the changed, new and deleted files (git status --porcelain)."
        ),
        parameters=params([]),
        read_only=True,
        run=git_status,
    ),
    Tool(
        name="git_diff",
        description=(
            "Show the uncommitted changes as a unified diff against the last commit, "
            "new files included."
        ),
        parameters=params(
            [],
            path={"type": "string", "description": "Only this file or directory"},
        ),
        read_only=True,
        run=git_diff,
    ),
]
