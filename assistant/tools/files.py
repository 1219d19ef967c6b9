"""list_files, read_file, write_file, edit_file: every file access happens in the sandbox."""

from __future__ import annotations

from typing import Any

from .base import Tool, ToolContext, ToolResult, params, run_helper
from .sandbox_helper import MAX_FILES, MAX_READ_BYTES, MAX_READ_LINES

PATH = {"type": "string", "description": "Path relative to the repository root, e.g. src/app.py"}


async def list_files(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return await run_helper(ctx, "list_files", args)


async def read_file(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return await run_helper(ctx, "read_file", args)


async def write_file(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return await run_helper(ctx, "write_file", args)


async def edit_file(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return await run_helper(ctx, "edit_file", args)


TOOLS = [
    Tool(
        name="list_files",
        description=(
            "List files of the repository matching a glob (e.g. '*.py', 'src/**/*.ts', '*'), "
            "sorted by path. Files ignored by .gitignore are left out. "
            f"At most {MAX_FILES} are listed."
        ),
        parameters=params(
            ["pattern"],
            pattern={"type": "string", "description": "Glob, e.g. '*.py' or 'docs/**'"},
            path={"type": "string", "description": "Directory to list (default: the root)"},
        ),
        read_only=True,
        run=list_files,
    ),
    Tool(
        name="read_file",
        description=(
            "Read a text file, with line numbers. Give start_line/end_line (1-based, "
            f"inclusive) for part of it. At most {MAX_READ_LINES} lines or "
            f"{MAX_READ_BYTES} bytes are returned; a note says where it was cut."
        ),
        parameters=params(
            ["path"],
            path=PATH,
            start_line={"type": "integer", "minimum": 1, "description": "First line (1-based)"},
            end_line={"type": "integer", "minimum": 1, "description": "Last line (inclusive)"},
        ),
        read_only=True,
        run=read_file,
    ),
    Tool(
        name="write_file",
        description=(
            "Create a file or replace its whole content; missing parent directories are made. "
            "Prefer edit_file to change part of an existing file."
        ),
        parameters=params(
            ["path", "content"],
            path=PATH,
            content={"type": "string", "description": "The complete new content"},
        ),
        read_only=False,
        run=write_file,
    ),
    Tool(
        name="edit_file",
        description=(
            "Replace one exact occurrence of old_text with new_text in a file. old_text must "
            "match exactly (whitespace and indentation included) and occur exactly once; "
            "include surrounding lines to make it unique."
        ),
        parameters=params(
            ["path", "old_text", "new_text"],
            path=PATH,
            old_text={"type": "string", "description": "The exact text to replace"},
            new_text={"type": "string", "description": "The text to put in its place"},
        ),
        read_only=False,
        run=edit_file,
    ),
]
