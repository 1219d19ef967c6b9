"""The read-only view of one file of a conversation's workspace, opened from a path in a reply
(file_links.py). A worker reads it (jobs._file); until it has, the page asks again."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_for_filename
from pygments.util import ClassNotFound

from accounts.http import AuthenticatedHttpRequest
from accounts.selectors import membership_for

from . import file_links, selectors, services
from .models import RepoJobStatus

# Larger files are shown as plain text: colouring them costs the web process more than it helps.
HIGHLIGHT_MAX_BYTES = 200_000
_formatter = HtmlFormatter(nowrap=True)


@login_required
@require_GET
def conversation_file(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    membership = membership_for(request.user, slug)
    conversation = selectors.conversation_for(membership, conversation_id)
    if selectors.workspace_of(conversation) is None:
        raise Http404("This conversation has no repository.")
    path = request.GET.get("path", "")
    line = request.GET.get("line", "")
    context: dict[str, Any] = {
        "team": membership.team,
        "conversation": conversation,
        "path": path,
        "line": int(line) if line.isdigit() and len(line) < 8 else 0,
    }
    status = 200
    problem = file_links.path_problem(path)
    if problem:
        context["error"], status = problem, 400
    else:
        job = services.workspace_file(conversation=conversation, path=path, user=request.user)
        context["job"] = job
        if job.status == RepoJobStatus.FAILED:
            context["error"] = job.error
            status = 404 if job.result == "missing" else 200
        elif job.status == RepoJobStatus.DONE:
            text = bytes(job.patch or b"").decode("utf-8", "replace")
            context["rows"] = _rows(path, text, context["line"])
            context["count"] = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    template = "assistant/_file_body.html" if request.htmx else "assistant/file.html"
    return render(request, template, context, status=200 if request.htmx else status)


def _rows(path: str, text: str, line: int) -> str:
    """The file as table rows, each with its number (a data attribute, shown by CSS) and an id
    to link to; ``line`` is marked."""
    lines = _highlighted(path, text).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    marked = ' class="hl" data-testid="target-line"'
    rows = [
        f'<tr id="L{n}"{marked if n == line else ""}><td class="ln" data-ln="{n}"></td>'
        f"<td>{code}</td></tr>"
        for n, code in enumerate(lines, 1)
    ]
    # Every piece is escaped: by Pygments, or by escape() for plain text.
    return mark_safe("".join(rows))  # noqa: S308


def _highlighted(path: str, text: str) -> str:
    if len(text) <= HIGHLIGHT_MAX_BYTES:
        try:
            # stripnl would drop the file's leading and trailing blank lines: numbers shift.
            lexer = get_lexer_for_filename(path.rsplit("/", 1)[-1], text, stripnl=False)
        except ClassNotFound:
            pass
        else:
            # Pygments closes its spans at each line's end, so the lines can be cut apart.
            return highlight(text, lexer, _formatter)
    return str(escape(text))
