"""Markdown to safe HTML, and the template contexts for messages and runs.

Rendering is markdown-it (raw HTML in the source is escaped, not passed through), Pygments for
fenced code, then nh3 as a second line of defence: no script, handler or javascript: URL
reaches the page whatever the model or a teammate writes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name, guess_lexer
from pygments.util import ClassNotFound

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


def run_context(run, snapshot_text: str = "", snapshot_seq: int = 0) -> dict[str, Any]:
    """Template context for a run bubble from a Run row (with its assistant message, if any)."""
    message = getattr(run, "assistant_message", None) if run.is_finished else None
    return {
        "id": str(run.uuid),
        "status": run.status,
        "error": run.error,
        "model": run.model,
        "message": message_context(message) if message else None,
        "text": snapshot_text,
        "seq": snapshot_seq,
    }
