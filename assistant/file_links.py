"""Paths in replies (``calc/ops.py:13``, ``src/app.js``) as links to a read-only view of that
file in the conversation's workspace.

What becomes a link is decided without reading anything: a path must be one of the
workspace's known files (``Workspace.paths``: the tree's files as of the last turn's start,
which the worker lists anyway for the repository context, plus the files turns added). A file
deleted since is still linked; its view says it is not there.

The file itself is read by a worker (``jobs._file``) from the git objects of the workspace's
last finished turn, in the sandbox, like every read of a workspace: never from the tree on disk
and never by the web process. Folders, symbolic links, submodules, binary files and files above
FILE_VIEW_MAX_BYTES are refused in words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from django.conf import settings
from django.urls import reverse
from django.utils.html import escape

from .models import Conversation, Workspace

MAX_PATHS = 20_000  # a larger repository links its first MAX_PATHS files (in git's order)
MAX_PATH_CHARS = 1024
_FILE_MODES = ("100644", "100755")

# A path-looking word: segments of letters, digits, "._-" joined by "/", then an optional
# ":line" or ":line-line". Not preceded by what would make it part of a longer word or a URL.
_CANDIDATE = re.compile(
    r"(?<![\w./\\:-])(?:\./)?((?:[\w.-]+/)*[\w.-]*\w)(?::(\d{1,7})(?:-\d{1,7})?)?(?![\w/])"
)
# A tag of the sanitised HTML (nh3 quotes every attribute value, which may hold ">").
_TAG = re.compile(r"""(<(?:[^>"']|"[^"]*"|'[^']*')*>)""")


def path_problem(path: str) -> str:
    """Why ``path`` can't name a file of the workspace, in words; "" if it can."""
    if not path:
        return "No file was named."
    if len(path) > MAX_PATH_CHARS or "\0" in path:
        return "That is not a file name."
    if path.startswith("/") or path.startswith("\\") or re.match(r"^[A-Za-z]:[\\/]", path):
        return "Only files inside the conversation's workspace can be shown, by a relative path."
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "Only files inside the conversation's workspace can be shown (no '..' or '.')."
    return ""


def remember(workspace: Workspace, entries: Iterable) -> None:
    """Store the tree's regular files (repos.TreeEntry) as the workspace's linkable paths."""
    paths = [e.path for e in entries if e.mode in _FILE_MODES][:MAX_PATHS]
    Workspace.objects.filter(pk=workspace.pk).update(paths=paths)


def add(workspace: Workspace, paths: Iterable[str]) -> None:
    """Files a turn added, linkable from its reply on."""
    known = Workspace.objects.filter(pk=workspace.pk).values_list("paths", flat=True).first()
    known = list(known or [])
    have = set(known)
    new = [path for path in paths if path not in have]
    if new and len(known) < MAX_PATHS:
        Workspace.objects.filter(pk=workspace.pk).update(paths=(known + new)[:MAX_PATHS])


@dataclass(frozen=True)
class Links:
    paths: frozenset[str]
    url: str  # the conversation's file view

    def href(self, path: str, line: str | None) -> str:
        query = f"?path={quote(path, safe='/')}"
        return self.url + (f"{query}&line={line}#L{line}" if line else query)


def links_for(conversation: Conversation, workspace: Workspace | None) -> Links | None:
    if workspace is None or not workspace.paths:
        return None
    url = reverse("conversation_file", args=[conversation.team.slug, conversation.uuid])
    return Links(frozenset(workspace.paths), url)


def link_paths(html: str, links: Links | None) -> str:
    """The sanitised HTML of a message with its known paths made links: in text and inline code,
    never inside a link or a fenced code block."""
    if links is None or not links.paths:
        return html
    out = []
    skip = 0  # inside <a> or <pre>
    for piece in _TAG.split(html):
        if piece.startswith("<"):
            name = piece[1:].split(None, 1)[0].rstrip(">/").lower() if len(piece) > 2 else ""
            if name in ("a", "pre"):
                skip += 1
            elif name in ("/a", "/pre"):
                skip = max(0, skip - 1)
            out.append(piece)
        elif skip or not piece:
            out.append(piece)
        else:
            out.append(_CANDIDATE.sub(lambda m: _link(m, links), piece))
    return "".join(out)


def _link(match: re.Match, links: Links) -> str:
    path, line = match.group(1), match.group(2)
    if path not in links.paths:
        return match.group(0)
    return f'<a class="file-link" href="{escape(links.href(path, line))}">{match.group(0)}</a>'


def max_bytes() -> int:
    return max(0, settings.FILE_VIEW_MAX_BYTES)
