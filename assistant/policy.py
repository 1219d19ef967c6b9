"""Which tool calls need a person's approval before they run.

Read-only tools always run. File edits run too: they stay inside the conversation's own
workspace and each turn can be undone. ``run_command`` asks a member every time, unless the
command starts with a prefix on the team's allowlist (``Team.command_allowlist``).

A prefix matches whole words, and only a plain command qualifies: "pytest" allows
"pytest -x tests/" but not "pytest; curl …" or "pytest && rm -rf …" — anything a shell would
treat as a second command, a substitution or a redirection is asked about, whatever its prefix.
"""

from __future__ import annotations

import re
import shlex

from accounts.models import Team

from .models import Approval

ASKS = frozenset({"run_command"})
MAX_PREFIX_CHARS = 200
MAX_PREFIXES = 100
# Separators, pipes, substitutions, redirections, subshells, background jobs and newlines.
_SHELL_SYNTAX = re.compile(r"[;&|`$<>(){}\n\r\\]")


def prefixes(team: Team) -> list[str]:
    return parse_allowlist(team.command_allowlist)


def parse_allowlist(text: str) -> list[str]:
    seen: list[str] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line and not line.startswith("#") and line not in seen:
            seen.append(line)
    return seen


def validate_allowlist(text: str) -> str:
    """The allowlist as it will be stored, or ValueError with words for the admin."""
    entries = parse_allowlist(text)
    if len(entries) > MAX_PREFIXES:
        raise ValueError(f"At most {MAX_PREFIXES} command prefixes.")
    for entry in entries:
        if len(entry) > MAX_PREFIX_CHARS:
            raise ValueError(f"“{entry[:40]}…” is longer than {MAX_PREFIX_CHARS} characters.")
        if _SHELL_SYNTAX.search(entry):
            raise ValueError(
                f"“{entry}” contains shell syntax (; & | $ ` < > and the like). A prefix is a "
                "plain command and its first arguments, such as “pytest” or “npm test”."
            )
        try:
            shlex.split(entry)
        except ValueError:
            raise ValueError(f"“{entry}” has an unclosed quote.")
    return "\n".join(entries)


def command_allowed(command: str, allowlist: list[str]) -> bool:
    if _SHELL_SYNTAX.search(command):
        return False
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    for prefix in allowlist:
        try:
            wanted = shlex.split(prefix)
        except ValueError:
            continue
        if wanted and words[: len(wanted)] == wanted:
            return True
    return False


def approval_for(name: str, args: object, allowlist: list[str]) -> str:
    """Approval.NOT_NEEDED, Approval.ALLOWLISTED, or Approval.ASKED (a person must decide)."""
    if name not in ASKS:
        return Approval.NOT_NEEDED
    command = args.get("command") if isinstance(args, dict) else None
    if isinstance(command, str) and command_allowed(command, allowlist):
        return Approval.ALLOWLISTED
    return Approval.ASKED


def allow_always(team: Team, command: str) -> str:
    """Add a command to the team's allowlist (an admin's "always allow" on a prompt); the
    entry added. Commands with shell syntax can't be allowlisted: ValueError."""
    entry = " ".join(command.split())
    validate_allowlist(entry)
    current = parse_allowlist(team.command_allowlist)
    if entry not in current:
        team.command_allowlist = validate_allowlist("\n".join([*current, entry]))
        team.save(update_fields=["command_allowlist"])
    return entry
