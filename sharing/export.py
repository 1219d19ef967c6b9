"""Export of a conversation as Markdown or JSON.

The same visibility rules as a share (sharing/content.py): ``until`` cuts the history at a
moment, strings are redacted, ``public`` names people only by the names they chose. Redaction
is on by default for members' exports too: a file travels further than the page it came from.

For the JSON API::

    from sharing.export import export_data, to_json, to_markdown
    data = export_data(conversation)                  # a dict, JSON-serialisable
    text = to_markdown(conversation, until=moment)    # str
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

from . import redact as redaction
from .content import Lens, turns

FORMAT = "tandem.conversation/1"
Redact = bool | Callable[[str], str]


def _lens(conversation, until: datetime | None, redact: Redact, public: bool) -> Lens:
    if redact is True:
        fn: Callable[[str], str] = redaction.for_team(conversation.team, hide_member_emails=public)
    elif redact is False:
        fn = redaction.no_redaction
    else:
        fn = redact
    return Lens(until=until, redact=fn, public=public)


def export_data(
    conversation,
    *,
    until: datetime | None = None,
    redact: Redact = True,
    public: bool = False,
    title: str | None = None,
) -> dict[str, Any]:
    """The conversation as plain data: messages in order, each reply with its text and its
    tool calls in order (``parts``).

    ``until``: leave out what came after this moment (a snapshot). ``redact``: True (the
    team's secrets and common token patterns), False, or any str -> str callable. ``public``:
    name people as a public share does and hide the model and provider errors.
    """
    lens = _lens(conversation, until, redact, public)
    entries: list[dict[str, Any]] = []
    for turn in turns(conversation, lens, changes=False):
        message = turn["message"]
        entries.append(
            {
                "id": message["id"],
                "role": "user",
                "author": message["author"],
                "created": _iso(message["created"]),
                "content": message["content"],
            }
        )
        for run in turn["runs"]:
            answer = run.get("message")
            entries.append(
                {
                    "id": run["id"],
                    "role": "assistant",
                    "status": run["status"],
                    "model": run["model"] or None,
                    "error": run["error"] or None,
                    "created": _iso(answer["created"]) if answer else None,
                    "content": run["text"],
                    # The reply in order: its text cut where tool calls came, the calls between.
                    "parts": [
                        {"type": "tool_call", **_call(p["call"])}
                        if "call" in p
                        else {"type": "text", "text": p["text"]}
                        for p in run["segments"]
                        if "call" in p or p["text"]
                    ],
                }
            )
    return {
        "format": FORMAT,
        "title": title if title is not None else lens.redact(conversation.display_title),
        "conversation": str(conversation.uuid),
        "exported_at": _iso(timezone.now()),
        "until": _iso(until),
        "messages": entries,
    }


def to_json(conversation, **options) -> str:
    """export_data as JSON text (same options)."""
    return json.dumps(export_data(conversation, **options), ensure_ascii=False, indent=2)


def to_markdown(conversation, **options) -> str:
    """The conversation as a Markdown document (same options as export_data)."""
    data = export_data(conversation, **options)
    out = [f"# {_line(data['title'])}", ""]
    note = f"Exported from Tandem on {_human(data['exported_at'])}"
    if data["until"]:
        note += f"; as it was on {_human(data['until'])}"
    out += [f"_{note}._", ""]
    for entry in data["messages"]:
        if entry["role"] == "user":
            who = entry["author"] or "Someone"
            out += [f"## {_line(who)} · {_human(entry['created'])}", "", entry["content"], ""]
            continue
        heading = "## Assistant"
        if entry["model"]:
            heading += f" · {_line(entry['model'])}"
        if entry["status"] != "succeeded":
            heading += f" ({entry['status']})"
        out += [heading, ""]
        for part in entry["parts"]:
            out += _call_markdown(part) if part["type"] == "tool_call" else [part["text"], ""]
        if entry["error"]:
            out += [f"> The reply failed: {_line(entry['error'])}", ""]
    return "\n".join(out).rstrip() + "\n"


def _call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call["id"],
        "name": call["name"],
        "arguments": call["arguments"],
        "status": call["status"],
        "exit_code": call.get("exit_code"),
        "duration_ms": call.get("duration_ms"),
        "output": call.get("output", ""),
        "truncated": bool(call.get("truncated")),
        "decided_by": call.get("decided_by"),
    }


def _call_markdown(call: dict[str, Any]) -> list[str]:
    meta = [call["status"]]
    if call["exit_code"] is not None:
        meta.append(f"exit {call['exit_code']}")
    if call["duration_ms"] is not None:
        meta.append(f"{call['duration_ms']} ms")
    lines = [
        f"**Tool `{call['name']}`** ({', '.join(meta)})",
        "",
        _fenced(call["arguments"], "json"),
    ]
    if call["output"]:
        lines += ["", _fenced(call["output"], "text")]
    return lines + [""]


def _fenced(text: str, lang: str) -> str:
    """A code block no backtick run inside the text can close early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _line(text: str) -> str:
    return " ".join(str(text).split())


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _human(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
