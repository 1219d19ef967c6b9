"""Which tool calls need a person's approval before they run.

Read-only tools always run. File edits run too: they stay inside the conversation's own
workspace and each turn can be undone. ``run_command`` asks a member every time, unless the
command starts with a prefix on the team's allowlist (``Team.command_allowlist``).

A prefix matches whole words, and only a plain command qualifies: "pytest" allows
"pytest -x tests/" but not "pytest; curl …" or "pytest && rm -rf …" — anything a shell would
treat as a second command, a substitution or a redirection is asked about, whatever its prefix.

A prefix that runs the repository's own code (``pytest``, ``make test``, ``npm run``, ``python``,
``./script``… see :func:`runs_repository_code`) allows far more than it says: after one
write_file the agent can run anything it wrote through it. The settings page says so next to
such an entry, and an entry can be *guarded* (``Team.command_allowlist_guarded``): it then runs
without asking only while the run has not changed files — no file edit so far in this run, and
no command other than a read-only one (:data:`READ_ONLY_COMMANDS`). Entries added with "Always
allow" on a prompt are guarded when they run repository code.
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


# First words of commands that run code from the repository (its tests, scripts, build files,
# package scripts) or any program named after them.
# (Words, not 100 quoted strings: easier to read.)
_RUNS_CODE = frozenset(
    """
    python python2 python3 pypy pypy3 pytest py.test tox nox coverage uv uvx poetry pipenv pdm
    hatch pip pip3 pre-commit invoke fab django-admin manage.py
    node nodejs npm npx yarn pnpm bun deno jest vitest mocha ava tsx ts-node
    make gmake cmake ninja meson scons bazel bazelisk just task rake bundle ruby rspec irb
    cargo rustc go gradle gradlew mvn mvnw ant sbt lein clojure java kotlin dotnet swift
    perl php composer phpunit mix elixir iex erl rebar3 ghc cabal stack runghc R Rscript julia
    lua luajit sh bash dash zsh ksh fish busybox source . exec eval
    """.split()  # noqa: SIM905
)
# Words that run the command after them (``env pytest``, ``timeout 60 make``): look past them.
_WRAPPERS = frozenset(
    ["env", "nice", "nohup", "timeout", "time", "xargs", "stdbuf", "ionice", "command", "builtin"]
)
# Commands that read and never write: a run that ran only these has not changed files.
READ_ONLY_COMMANDS = (
    "ls", "cat", "head", "tail", "wc", "grep", "rg", "pwd", "tree", "file", "stat", "du", "df",
    "diff", "cmp", "sort", "uniq", "git status", "git diff", "git log", "git show", "git blame",
    "git grep", "git branch", "git rev-parse", "git ls-files",
)  # fmt: skip


def prefixes(team: Team) -> list[str]:
    return parse_allowlist(team.command_allowlist)


def runs_repository_code(prefix: str) -> bool:
    """Whether commands starting with ``prefix`` may run code from the repository (so allowing
    them allows whatever the agent writes first)."""
    try:
        words = shlex.split(prefix)
    except ValueError:
        return True
    while words and (words[0] in _WRAPPERS or "=" in words[0] or words[0].startswith("-")):
        words = words[1:]  # env FOO=1 timeout 60 -- make: what runs is make
        if words and words[0].isdigit():
            words = words[1:]
    if not words:
        return bool(prefix.split())  # a wrapper with nothing after it runs anything
    first = words[0]
    return (
        "/" in first
        or first.rsplit("/", 1)[-1] in _RUNS_CODE
        or first.endswith((".py", ".sh", ".js", ".rb", ".pl"))
    )


def guarded_entries(team: Team) -> set[str]:
    """The entries that run without asking only while the run has not changed files."""
    return set(parse_allowlist(team.command_allowlist_guarded)) & set(prefixes(team))


def changes_files(name: str, args: object, read_only: bool) -> bool:
    """Whether a tool call that ran may have changed the workspace's files."""
    if read_only:
        return False
    if name != "run_command":
        return True  # write_file, edit_file…
    command = args.get("command") if isinstance(args, dict) else None
    return not (isinstance(command, str) and command_allowed(command, list(READ_ONLY_COMMANDS)))


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
    return bool(matching_prefixes(command, allowlist))


def matching_prefixes(command: str, allowlist: list[str]) -> list[str]:
    """The allowlist entries that allow ``command`` (none if it has shell syntax)."""
    if _SHELL_SYNTAX.search(command):
        return []
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    found = []
    for prefix in allowlist:
        try:
            wanted = shlex.split(prefix)
        except ValueError:
            continue
        if wanted and words[: len(wanted)] == wanted:
            found.append(prefix)
    return found


def approval_for(
    name: str,
    args: object,
    allowlist: list[str],
    *,
    guarded: set[str] | frozenset[str] = frozenset(),
    changed: bool = False,
    registries_allowed: bool = False,
) -> str:
    """Approval.NOT_NEEDED, Approval.ALLOWLISTED, or Approval.ASKED (a person must decide).

    ``guarded``: entries that allow a command only while ``changed`` is False, i.e. the run has
    not changed files so far (see :func:`changes_files`).

    A command asking for the package registries (``registries: true``) always asks where the
    team allows that (``registries_allowed``), whatever the allowlist says; where it does not,
    nothing is asked: the tool refuses it without running it."""
    if name not in ASKS:
        return Approval.NOT_NEEDED
    if isinstance(args, dict) and args.get("registries") is True:
        return Approval.ASKED if registries_allowed else Approval.NOT_NEEDED
    command = args.get("command") if isinstance(args, dict) else None
    matches = matching_prefixes(command, allowlist) if isinstance(command, str) else []
    if any(prefix not in guarded for prefix in matches) or (matches and not changed):
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
        fields = ["command_allowlist"]
        if runs_repository_code(entry):  # safe by default; an admin can lift it in Settings
            team.command_allowlist_guarded = "\n".join([*guarded_entries(team), entry])
            fields.append("command_allowlist_guarded")
        team.save(update_fields=fields)
    return entry


def set_guarded(team: Team, entries: set[str]) -> None:
    """Store which allowlist entries are guarded (only those on the allowlist count)."""
    team.command_allowlist_guarded = "\n".join(e for e in prefixes(team) if e in entries)
