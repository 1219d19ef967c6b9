"""Markdown to safe HTML, and the template contexts for messages and runs.

Rendering is markdown-it (raw HTML in the source is escaped, not passed through), Pygments for
fenced code, then nh3 as a second line of defence: no script, handler or javascript: URL
reaches the page whatever the model or a teammate writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name, guess_lexer
from pygments.util import ClassNotFound

from . import diff_html

_formatter = HtmlFormatter(nowrap=True)

ALLOWED_TAGS = {
    "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td", "th",
    "thead", "tr", "ul", "div",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "span": {"class"},
    "code": {"class"},
    "div": {"class"},
    "pre": {"class"},
    "th": {"align"},
    "td": {"align"},
}


def _highlight(code: str, lang: str, _attrs: Any) -> str:
    try:
        lexer = get_lexer_by_name(lang) if lang else guess_lexer(code)
    except ClassNotFound:
        return ""  # markdown-it escapes it as plain code
    return highlight(code, lexer, _formatter)


_md = (
    MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    .enable("table")
    .enable("strikethrough")
)
_md.options["highlight"] = _highlight


@lru_cache(maxsize=2048)
def render_markdown(text: str) -> str:
    html = _md.render(text)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def message_context(message) -> dict[str, Any]:
    """Template context for a message, from a Message row or an event's message dict."""
    if isinstance(message, dict):
        return message
    return {
        "id": str(message.uuid),
        "role": message.role,
        "author": message.author.name if message.author else None,
        "content": message.content,
        "created": message.created,
    }


def run_context(
    run, snapshot_text: str = "", snapshot_seq: int = 0, *, workspace=None, links=None
) -> dict[str, Any]:
    """Template context for a run bubble from a Run row (with its assistant message, if any,
    its tool calls, and the turn's changes when ``workspace`` is given); ``links``
    (file_links.Links) makes the workspace's paths in the reply links."""
    message = getattr(run, "assistant_message", None) if run.is_finished else None
    text, seq = snapshot_text, snapshot_seq
    if run.status == "waiting":
        text, seq = run.text, run.seq
    elif message is not None:
        text = message.content
    calls = list(run.tool_calls.all()) if run.pk else []
    live = not run.is_finished
    return {
        "id": str(run.uuid),
        "status": run.status,
        "error": run.error,
        "model": run.model,
        "message": message_context(message) if message else None,
        "text": text,
        "seq": seq,
        "segments": segments(text, [tool_call_context(call) for call in calls], live=live),
        "changes": run_changes(run, workspace) if workspace is not None else None,
        "links": links,
        "undo_pending": bool(getattr(run, "undo_requested_by_id", None)),
        "undo_error": getattr(run, "undo_error", ""),
    }


def segments(text: str, calls: list[dict], *, live: bool) -> list[dict]:
    """The reply's text cut where tool calls came, with the calls between the pieces. A live
    reply always ends with a text piece: new deltas go to the last one."""
    out: list[dict] = []
    pos = 0
    for call in calls:
        offset = min(max(call["text_offset"], pos), len(text))
        if text[pos:offset] or live:
            out.append({"text": text[pos:offset]})
        out.append({"call": call})
        pos = offset
    if text[pos:] or live:
        out.append({"text": text[pos:]})
    return out


def tool_call_context(call) -> dict[str, Any]:
    """Template context for a tool call's card, from a ToolCall row or an event's dict."""
    if not isinstance(call, dict):
        from .events import tool_call_data

        data = tool_call_data(call)
        data["text_offset"] = call.text_offset
        call = data
    context = dict(call)
    try:
        args = json.loads(call["arguments"] or "{}")
    except ValueError:
        args = None
    context["summary"] = _summary(call["name"], args)
    context["arguments_pretty"] = (
        json.dumps(args, indent=2, ensure_ascii=False) if args is not None else call["arguments"]
    )
    # Only run_command's: another tool's "command" argument is never offered for the allowlist.
    is_command = call["name"] == "run_command" and isinstance(args, dict)
    context["command"] = args.get("command", "") if is_command else ""
    context["allowlistable"] = _allowlistable(context["command"])
    context["done"] = call["status"] in ("succeeded", "failed", "denied", "cancelled")
    context["decided_at"] = (
        datetime.fromisoformat(call["decided_at"]) if call.get("decided_at") else None
    )
    return context


def _allowlistable(command: object) -> bool:
    """Whether "Always allow" can be offered: commands with shell syntax never run unasked."""
    from . import policy

    if not isinstance(command, str) or not command.strip():
        return False
    try:
        policy.validate_allowlist(command)
    except ValueError:
        return False
    return True


def _summary(name: str, args: Any) -> str:
    """One line saying what the call does: the command, the file, the pattern."""
    if not isinstance(args, dict):
        return "(arguments that are not valid JSON)"
    if name == "run_command":
        return str(args.get("command", "")) + (
            "  (package registries)" if args.get("registries") else ""
        )
    if name == "setup":  # environment.CALL_NAME: the repository's setup script, not the model's
        return f"the repository's setup script, in the image {args.get('image', '')}"
    if name == "grep":
        where = args.get("path") or args.get("glob") or ""
        return f"{args.get('pattern', '')}" + (f"  in {where}" if where else "")
    if name == "read_file" and args.get("start_line"):
        end = args.get("end_line") or ""
        return f"{args.get('path', '')}:{args['start_line']}-{end}"
    for key in ("path", "glob", "pattern"):
        if args.get(key):
            return str(args[key])
    return ", ".join(f"{k}={v}" for k, v in args.items())[:200]


def run_changes(run, workspace=None, *, redact: Callable[[str], str] | None = None) -> dict | None:
    """The files a finished turn changed, its highlighted diff, and whether it was undone:
    read from the turn's stored RunDiff (the worker computes it, bounded, when the turn ends;
    a page never runs git). ``redact`` (a share page's) is applied to paths and the diff
    before highlighting, which would otherwise split a secret across spans."""
    if not run.changed_files:
        return None
    from .models import RunDiff

    try:
        stored = run.diff
    except RunDiff.DoesNotExist:
        from . import jobs

        jobs.record_diff_soon(run)  # a turn from before diffs were stored, or a lost job
        return {"pending": True}
    if stored.error:
        return {"error": stored.error}
    files = []
    for f in stored.files:
        f = dict(f)
        f["path"] = redact(f["path"]) if redact else f["path"]
        f["old_path"] = redact(f["old_path"]) if redact and f["old_path"] else f["old_path"]
        f["size_text"] = _human_size(f.get("size"))
        files.append(f)
    diff, html = stored.text, stored.html
    redacted = redact(diff) if redact is not None else diff
    if redacted != diff or (diff and not html.startswith(diff_html.MARK)):
        # A share page's redaction changed it, or a row stored before diffs had line numbers.
        html = highlight_diff(redacted, json.dumps(files))
    return {
        "files": files,
        "files_total": stored.files_total,
        "files_left_out": max(0, stored.files_total - len(files)),
        "added": stored.added,
        "deleted": stored.deleted,
        "diff_html": html,
        "clipped": stored.clipped,
        "too_large": [f for f in files if f.get("too_large")],
        "undone_by": run.undone_by.name if run.undone_by_id else None,
        "undone_at": run.undone_at,
    }


def _human_size(size: int | None) -> str:
    if size is None:
        return ""
    if size < 1000:
        return f"{size} bytes"
    scaled = float(size)
    for unit in ("kB", "MB", "GB"):
        scaled /= 1000
        if scaled < 1000 or unit == "GB":
            return f"{scaled:.1f} {unit}"
    return ""


@lru_cache(maxsize=32)
def highlight_diff(diff: str, files_json: str) -> str:
    """A diff rendered at page time (share pages whose redaction changed it, rows stored in
    the older format): each entry is at most a few times DIFF_MAX_TOTAL_BYTES."""
    return diff_html.render(diff, json.loads(files_json))
