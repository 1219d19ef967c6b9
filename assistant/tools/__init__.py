"""The assistant's tools: a registry of name -> :class:`Tool`, their schemas, and :func:`execute`.

Every tool that touches the repository runs inside the sandbox (``assistant.sandbox``): the file
tools through a small helper script (``sandbox_helper``), grep through ripgrep, git through git,
run_command through ``/bin/sh -c``. :func:`execute` never raises for a bad call, an unknown tool,
a sandbox that can't start or a bug in a tool: it returns a ``ToolResult(ok=False, ...)`` the
model can read. Only cancellation (Stop) propagates, after the sandbox killed the command.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from assistant.sandbox import SandboxError

from . import files, git, search, shell
from .base import Tool, ToolContext, ToolResult
from .sandbox_helper import ToolError, check_rel

__all__ = [
    "TOOLS",
    "Tool",
    "ToolContext",
    "ToolResult",
    "execute",
    "get",
    "schemas",
    "validate",
]

log = logging.getLogger(__name__)

TOOLS: dict[str, Tool] = {
    tool.name: tool for family in (files, search, shell, git) for tool in family.TOOLS
}
_PATH_ARGS = ("path",)  # checked here too, before any sandbox starts
_TYPES = {
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "number": (int, float),
    "object": (dict,),
    "array": (list,),
}


def get(name: str) -> Tool | None:
    return TOOLS.get(name)


def schemas(*, read_only: bool | None = None) -> list[dict[str, Any]]:
    """Every tool's schema (OpenAI function-calling format); only read-only ones if asked."""
    return [t.schema() for t in TOOLS.values() if read_only is None or t.read_only == read_only]


def validate(tool: Tool, args: Any) -> str | None:
    """What is wrong with ``args`` for ``tool``, in words, or None."""
    if not isinstance(args, dict):
        return f"The arguments of {tool.name} must be a JSON object."
    spec = tool.parameters
    props: dict[str, dict[str, Any]] = spec.get("properties", {})
    missing = [key for key in spec.get("required", []) if key not in args]
    if missing:
        return f"{tool.name} is missing required argument(s): {', '.join(missing)}."
    unknown = [key for key in args if key not in props]
    if unknown and spec.get("additionalProperties") is False:
        allowed = ", ".join(props) or "none"
        return f"{tool.name} got unknown argument(s): {', '.join(unknown)} (allowed: {allowed})."
    for key, value in args.items():
        prop = props.get(key, {})
        kind = prop.get("type")
        if value is None and key not in spec.get("required", []):
            continue  # an optional argument sent as null: as if left out
        if kind in _TYPES:
            # bool is an int in Python, not in JSON
            wrong_bool = isinstance(value, bool) and kind in ("integer", "number")
            if wrong_bool or not isinstance(value, _TYPES[kind]):
                return f"{tool.name}: argument {key} must be of type {kind}."
        if kind in ("integer", "number"):
            if "minimum" in prop and value < prop["minimum"]:
                return f"{tool.name}: argument {key} must be at least {prop['minimum']}."
            if "maximum" in prop and value > prop["maximum"]:
                return f"{tool.name}: argument {key} must be at most {prop['maximum']}."
        if key in _PATH_ARGS and isinstance(value, str):
            try:
                check_rel(value)
            except ToolError as exc:
                return str(exc)
    return None


async def execute(name: str, args: Any, ctx: ToolContext) -> ToolResult:
    """Run the tool ``name`` with ``args``; a result in every case but cancellation."""
    tool = TOOLS.get(name)
    if tool is None:
        known = ", ".join(TOOLS)
        return ToolResult(ok=False, output=f"Unknown tool “{name}”. Available tools: {known}.")
    if error := validate(tool, args):
        return ToolResult(ok=False, output=error)
    args = {key: value for key, value in args.items() if value is not None}
    started = time.monotonic()
    try:
        result = await tool.run(ctx, args)
    except SandboxError as exc:
        result = ToolResult(ok=False, output=f"The {name} tool could not run: {exc}")
    except Exception:
        log.exception("tool %s failed", name)
        result = ToolResult(ok=False, output=f"The {name} tool failed with an internal error.")
    if not result.duration_ms:
        result.duration_ms = int((time.monotonic() - started) * 1000)
    return result
