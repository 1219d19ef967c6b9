"""Autobahn's per-frame debug arguments, made cheap.

autobahn (under Daphne's WebSocket) logs every frame it writes at debug level, and builds the
log call's arguments before the logger can say it drops them: ``hltype(self.sendData)``,
``hlval(self.peer)`` and ``hlval(len(data))`` colour their text with ``click.style`` whenever
click is installed (Celery brings it). Profiled under bench/fanout.py that was about a quarter
of the web process's CPU for each delta sent to a WebSocket (docs/benchmarks.md). The
replacements give the same words without colour, for the rare run with autobahn's debug log on.
"""

from __future__ import annotations

from typing import Any


def plain_type(obj: Any) -> str:
    return f"<{getattr(obj, '__qualname__', type(obj).__qualname__)}>"


def plain_value(value: Any, color: str = "white", bold: bool = True) -> str:
    return f"{value}"


def install() -> None:
    """Replace the names autobahn's WebSocket protocol module calls (it imported them from
    autobahn.util, so patching there would not reach it)."""
    from autobahn.websocket import protocol

    protocol.hltype = plain_type
    protocol.hlval = plain_value
