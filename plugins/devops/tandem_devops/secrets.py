"""secrets_scan: committed secrets found by detect-secrets, never shown.

The tree's files are read in the sandbox and scanned here, in memory, with detect-secrets'
default plugins and filters; with ``history``, the lines added by past commits (``git log -p``
run in the sandbox) too. A finding is its type, file, line (and commit) and the first 8 hex
digits of detect-secrets' SHA-1 of the value, so two findings of one secret can be matched:
the value itself never leaves this module.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterable
from typing import Any

from assistant.plugins import Files, Output, PluginTool, Workspace

MAX_FINDINGS = 200
HISTORY_COMMITS = 200  # newest first; git log's output is also cut by the sandbox (1 MB)
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")
# detect-secrets keeps its configuration in one global: one scan at a time per process.
_scan_lock = threading.Lock()


def scan_lines(filename: str, lines: list[tuple[int, str]]) -> list[tuple[str, int, str]]:
    """(type, line number, hash prefix) of every potential secret in ``lines``."""
    from detect_secrets.core import scan
    from detect_secrets.settings import default_settings

    numbered = list(enumerate((text for _n, text in lines), start=1))
    real = {i: n for i, (n, _text) in enumerate(lines, start=1)}
    with _scan_lock, default_settings():
        # The files are not on this machine's disk: the filter that drops names that are not
        # files would drop them all (detect-secrets' own scan_line turns it off the same way).
        scan.get_settings().disable_filters("detect_secrets.filters.common.is_invalid_file")
        scan.get_filters.cache_clear()
        try:
            found = list(scan._process_line_based_plugins(numbered, filename=filename))
        finally:
            scan.get_filters.cache_clear()
    return sorted(
        {(s.type, real.get(s.line_number, s.line_number), s.secret_hash[:8]) for s in found},
        key=lambda f: (f[1], f[0]),
    )


def scan_tree(files: Files) -> list[str]:
    out = []
    for name, text in sorted(files.files.items()):
        for kind, line, digest in scan_lines(name, list(enumerate(text.splitlines(), 1))):
            out.append(f"{name}:{line}: {kind} (hash {digest})")
    return out


def added_lines(log: str) -> Iterable[tuple[str, str, list[tuple[int, str]]]]:
    """(commit, file, [(line, text)]) of the lines each commit added, from ``git log -p -U0``."""
    commit, path, lineno = "", None, 0
    group: list[tuple[int, str]] = []
    for line in log.splitlines():
        if line.startswith("commit "):
            if path and group:
                yield commit, path, group
            commit, path, group = line[7:19], None, []
        elif line.startswith("+++ "):
            if path and group:
                yield commit, path, group
            target = line[4:]
            path, group = (target[2:] if target.startswith("b/") else None), []
        elif (m := _HUNK.match(line)) is not None:
            lineno = int(m.group(1))
        elif line.startswith("+") and path is not None:
            group.append((lineno, line[1:]))
            lineno += 1
    if path and group:
        yield commit, path, group


def scan_history(log: str) -> list[str]:
    first_seen: dict[tuple[str, str, str], str] = {}
    for commit, path, lines in added_lines(log):
        for kind, line, digest in scan_lines(path, lines):
            # git log lists the newest first: the last one seen is where it came in.
            first_seen[(path, kind, digest)] = f"{path}:{line} in commit {commit}: {kind}"
    return [f"{where} (hash {key[2]})" for key, where in sorted(first_seen.items())]


async def run(ws: Workspace, args: dict[str, Any]) -> Output:
    files = await ws.read_files(["**"], max_files=2000, max_bytes=10_000_000)
    findings = await asyncio.to_thread(scan_tree, files)
    lines = []
    notes = []
    if files.skipped:
        notes.append(f"Not scanned (too large or too many files): {len(files.skipped)} file(s).")
    history: list[str] = []
    if args.get("history"):
        log = await ws.git(
            "log", "-p", "-U0", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames",
            f"--max-count={HISTORY_COMMITS}", "--format=commit %H", "HEAD",
        )  # fmt: skip
        if log.exit_code != 0 or log.stopped:
            why = log.stopped or log.stderr.strip()[-500:] or f"exit code {log.exit_code}"
            notes.append(f"The history could not be read: {why}")
        else:
            history = await asyncio.to_thread(scan_history, log.stdout)
            scope = f"the last {HISTORY_COMMITS} commits" + (
                " (cut: output too long)" if log.truncated else ""
            )
            notes.append(f"History: {scope} scanned.")
    total = len(findings) + len(history)
    if not total:
        lines.append(f"No secrets found in {len(files.files)} file(s).")
    else:
        lines.append(
            f"{total} potential secret(s) (values not shown; the hash prefix tells repeats apart):"
        )
        if findings:
            lines.append("In the working tree:")
            lines += findings[:MAX_FINDINGS]
        if history:
            lines.append("In the git history (where each was added):")
            lines += history[:MAX_FINDINGS]
    return Output(total == 0, "\n".join(lines + notes))


secrets_scan = PluginTool(
    name="secrets_scan",
    description=(
        "Scan the repository's files (and, with history=true, the lines added by its last "
        f"{HISTORY_COMMITS} commits) for committed secrets with detect-secrets: API keys, "
        "private keys, passwords, high-entropy strings. Results give type, file and line, never "
        "the secret."
    ),
    parameters={
        "type": "object",
        "properties": {
            "history": {"type": "boolean", "description": "Also scan past commits"},
        },
        "required": [],
        "additionalProperties": False,
    },
    read_only=True,
    run=run,
)
