"""grep (ripgrep) and glob (git's file list) in the sandbox."""

from __future__ import annotations

from typing import Any

from .base import Tool, ToolContext, ToolResult, params, run_helper
from .sandbox_helper import MAX_GLOB, MAX_GREP_LINES


async def grep(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return await run_helper(ctx, "grep", args)


async def glob(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return await run_helper(ctx, "glob", args)


TOOLS = [
    Tool(
        name="grep",
        description=(
            "Search file contents with a regular expression (ripgrep syntax). Results are "
            "'path:line:text' (context lines 'path-line-text'), sorted by path; files ignored "
            f"by .gitignore are skipped. At most {MAX_GREP_LINES} lines are returned."
        ),
        parameters=params(
            ["pattern"],
            pattern={"type": "string", "description": "Regular expression"},
            path={"type": "string", "description": "File or directory to search (default: all)"},
            glob={"type": "string", "description": "Only files matching this glob, e.g. '*.py'"},
            context_lines={
                "type": "integer",
                "minimum": 0,
                "maximum": 20,
                "description": "Lines of context around each match",
            },
            case_insensitive={"type": "boolean", "description": "Ignore case"},
        ),
        read_only=True,
        run=grep,
    ),
    Tool(
        name="glob",
        description=(
            "Find files by name pattern, e.g. '**/*.py', 'src/**/test_*.ts', 'Makefile' (no "
            "slash: the name anywhere). Searches the files git tracks plus new files .gitignore "
            "does not exclude; the most recently modified first. "
            f"At most {MAX_GLOB} paths are returned."
        ),
        parameters=params(
            ["pattern"],
            pattern={"type": "string", "description": "Glob, e.g. '**/*.py'"},
            path={"type": "string", "description": "Directory to search (default: the root)"},
        ),
        read_only=True,
        run=glob,
    ),
]
