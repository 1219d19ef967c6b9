"""``manage.py check`` for the MCP settings an operator writes by hand."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.compatibility)
def check_stdio_mounts(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """MCP_STDIO_MOUNTS entries that are left out (the sandbox never sees them)."""
    from .client import mount_problem

    found: list[checks.CheckMessage] = []
    for entry in settings.MCP_STDIO_MOUNTS:
        host, sep, inside = entry.partition(":")
        problem = mount_problem(host, inside) if sep else "it is not HOST:/opt/NAME"
        if problem:
            found.append(
                checks.Warning(
                    f"MCP_STDIO_MOUNTS entry {entry!r} is ignored: {problem}.",
                    id="tandem.W101",
                )
            )
    return found
