"""What Push and Open pull request propose and accept (issue 16): the commit message a person
edits before pushing, and the pull request's title, description and base branch.

The proposed commit message (``commit_message_proposal``) is built from what the database
already holds, so the web process needs no git:
- the summary line is the conversation's title (a person's, or the one its first message
  gave); an untitled conversation takes the first line of the last message whose turn changed
  files; cut at 72 characters;
- the body lists the files the conversation changed, from each finished turn's stored diff
  (turns undone left out; a file added and later deleted left out; at most 50, then how many
  more), with what happened to each (new, deleted, renamed from …);
- a last line says it was made with Tandem, in which team.

A message a person sends is checked (``commit_message_checked``) and then committed exactly:
line ends made \\n and the trailing blank space of the whole message dropped, as git itself
stores one; the first line must say something, with at most COMMIT_SUBJECT_MAX characters.
"""

from __future__ import annotations

import re

from .errors import ChatError
from .models import Conversation, RepoJob, Repository, Role, RunDiff, Workspace

COMMIT_SUBJECT_MAX = 200
COMMIT_MESSAGE_MAX = 20_000
SUMMARY_CHARS = 72
FILES_LISTED = 50
# GitLab's limit for a title; GitHub's description limit is 65,536 characters.
PR_TITLE_MAX = 255
PR_BODY_MAX = 60_000


class Invalid(ChatError):
    """What a person wrote can't be used (the API answers 422, not 409)."""


_BRANCH = re.compile(r"[^\s~^:?*\[\\\x00-\x1f\x7f]{1,255}")


def _summary(text: str) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= SUMMARY_CHARS else line[: SUMMARY_CHARS - 1].rstrip() + "…"


def _changed_files(conversation: Conversation) -> list[str]:
    """The conversation's changed files as lines of the body, from the stored diffs."""
    diffs = (
        RunDiff.objects.filter(run__conversation=conversation, run__undone_at__isnull=True)
        .order_by("run__created", "run__id")
        .values_list("files", flat=True)
    )
    first: dict[str, str] = {}  # path -> its status in the first turn that touched it
    last: dict[str, dict] = {}  # path -> its entry in the last one
    for files in diffs:
        for entry in files or []:
            path = str(entry.get("path", ""))
            first.setdefault(path, str(entry.get("status", "")))
            last[path] = entry
    lines = []
    for path, entry in last.items():
        status = str(entry.get("status", ""))
        if first[path] == "A" and status == "D":
            continue  # made and removed again: not part of the change
        if first[path] == "A":
            lines.append(f"- {path} (new)")
        elif status == "D":
            lines.append(f"- {path} (deleted)")
        elif status == "R" and entry.get("old_path"):
            lines.append(f"- {path} (renamed from {entry['old_path']})")
        else:
            lines.append(f"- {path}")
    if len(lines) > FILES_LISTED:
        lines = lines[:FILES_LISTED] + [f"- and {len(lines) - FILES_LISTED} more"]
    return lines


def commit_message_proposal(conversation: Conversation) -> str:
    summary = _summary(conversation.title)
    if not summary:
        changed = (
            conversation.messages.filter(role=Role.USER, runs__tree_after__gt="")
            .order_by("-created", "-id")
            .values_list("content", flat=True)
            .first()
        )
        summary = _summary(changed or "") or "Changes made with Tandem"
    parts = [summary]
    if files := _changed_files(conversation):
        parts.append("Changed files:\n" + "\n".join(files))
    parts.append(f"Made with Tandem in a conversation of the team {conversation.team.name}.")
    return "\n\n".join(parts) + "\n"


def commit_message_checked(message: str) -> str:
    """The message as it will be committed, or ChatError in words."""
    text = message.replace("\r\n", "\n").replace("\r", "\n")
    if "\0" in text:
        raise Invalid("The commit message can't contain a NUL character.")
    text = text.rstrip()
    subject = text.split("\n", 1)[0]
    if not subject.strip():
        raise Invalid("Write a commit message: its first line says what the change does.")
    if len(subject) > COMMIT_SUBJECT_MAX:
        raise Invalid(
            f"The commit message's first line has {len(subject):,} characters; at most "
            f"{COMMIT_SUBJECT_MAX} (put the rest below it, after an empty line)."
        )
    if len(text) > COMMIT_MESSAGE_MAX:
        raise Invalid(
            f"The commit message has {len(text):,} characters; at most {COMMIT_MESSAGE_MAX:,}."
        )
    return text + "\n"


def pull_request_defaults(push: RepoJob, workspace: Workspace) -> dict[str, str]:
    """What the Open pull request form proposes: the pushed commit's message (its first line
    the title, the rest the description) into the repository's default branch."""
    subject, _, rest = push.message.partition("\n")
    return {
        "title": subject.strip()[:PR_TITLE_MAX],
        "body": rest.strip(),
        "base": default_base(workspace.repository, workspace),
    }


def default_base(repo: Repository, workspace: Workspace | None = None) -> str:
    """The repository's default branch: the one set on it, else the remote's (first of the
    branches its last fetch stored), else the branch the conversation started from."""
    if repo.default_branch:
        return repo.default_branch
    if repo.branches:
        return str(repo.branches[0])
    return workspace.branch if workspace is not None else ""


def pull_request_checked(*, title: str, body: str, base: str) -> tuple[str, str, str]:
    """(title, body, base) as sent to GitHub or GitLab, or ChatError in words."""
    if any("\0" in text for text in (title, body, base)):
        raise Invalid("The pull request can't contain a NUL character.")
    title = " ".join(title.split())  # one line
    if not title:
        raise Invalid("Give the pull request a title.")
    if len(title) > PR_TITLE_MAX:
        raise Invalid(f"A pull request's title has at most {PR_TITLE_MAX} characters.")
    body = body.replace("\r\n", "\n").strip()
    if len(body) > PR_BODY_MAX:
        raise Invalid(f"A pull request's description has at most {PR_BODY_MAX:,} characters.")
    base = base.strip()
    if not base:
        raise Invalid("Name the branch the pull request goes into.")
    if not _BRANCH.fullmatch(base) or base.startswith(("-", "/")) or ".." in base:
        raise Invalid(f"“{base[:100]}” is not a branch name.")
    return title, body, base
