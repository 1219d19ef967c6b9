"""The server's own git on a workspace, run inside the sandbox.

A process of the agent may still be running, or a new one may start, while the server reads or
writes the tree: it can swap a file for a symlink between git's ``lstat`` and ``open``. Hardening
git's reads cannot close that race; taking away what the race could reach does. So every git
command that touches a workspace (snapshot, status, diff, undo, commit) runs under bubblewrap
through :func:`assistant.sandbox.run`, with the same rights as the agent's commands or fewer:

- it sees the worktree at ``/workspace`` and the workspace's own git directory at
  ``/workspace/.git`` (read-write: git writes objects and indexes there), read-only system
  directories and the sandbox's stub ``/etc`` — no other file of the host;
- no network, no environment of the server (only the fixed one below), a PID namespace and a
  ``/proc`` of its own: ``/proc/self/environ`` is this git's clean environment, and no process
  of the server is visible;
- as root, the same unprivileged uid as the agent's commands.

A symlink in the tree can then only lead to what the sandbox itself shows, which the agent can
read anyway. On top of that git runs with ``repos._HARDENING`` as on the host: no hooks, no
fsmonitor, no configured programs.

Only the fixed arguments below reach a shell: file names never do (they go through stdin or as
separate arguments).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass
from pathlib import Path

from . import sandbox
from .sandbox import SandboxError, SandboxLimits

TREE = sandbox.WORKDIR  # where the sandbox mounts the worktree
GIT_DIR = f"{sandbox.WORKDIR}/.git"  # and the workspace's git directory
ENV_PROGRAM = "/usr/bin/env"
# The whole environment git gets in there (bwrap's own is cleared).
ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",  # the sandbox's own tmpfs; GIT_CONFIG_GLOBAL keeps git from reading it
    "LC_ALL": "C",  # English messages, which repos._HINTS and _APPLY_REASONS match
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",
    "SSH_ASKPASS": "",
    "GIT_PAGER": "cat",
    "GIT_EDITOR": "false",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_LITERAL_PATHSPECS": "1",
}
# After repos._HARDENING, for git in here only.
FLAGS = (
    "-c", "safe.directory=*",  # as root the files are the server's, seen as nobody's in here
    "-c", "core.packedGitLimit=1g",  # pack windows fit well inside the address-space limit
    "-c", "core.packedGitWindowSize=128m",
    f"--git-dir={GIT_DIR}",
    f"--work-tree={TREE}",
)  # fmt: skip


def limits(timeout: float) -> SandboxLimits:
    return SandboxLimits(
        wall_seconds=timeout,
        cpu_seconds=int(timeout) + 1,
        memory_mb=4096,  # address space: git maps pack files
        max_processes=64,
        max_output_bytes=256 * 1024 * 1024,  # a whole conversation's patch, binary files included
        max_file_mb=4096,  # objects, packs and indexes of a large repository
        tmp_mb=16,
    )


@dataclass
class GitResult:
    code: int | None  # None: stopped (see why)
    out: bytes
    err: bytes
    why: str = ""  # "", "timeout", "output", "cpu", "file_size", "cancelled"


def run(
    argv: list[str],
    *,
    tree: Path,
    git_dir: Path,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 120,
) -> GitResult:
    """Run ``argv`` (git, or ``sh -c`` with a fixed script) in the sandbox over the workspace.
    ``env`` adds to :data:`ENV`. Raises SandboxError when the sandbox cannot start."""
    variables = {**ENV, **(env or {})}
    if any("=" in key or "\0" in key + value for key, value in variables.items()):
        raise ValueError("bad environment variable")
    command = [ENV_PROGRAM, "-", *(f"{k}={v}" for k, v in variables.items()), *argv]
    call = sandbox.run(
        command,
        worktree=tree,
        git_dir=git_dir,
        git_dir_writable=True,
        limits=limits(timeout),
        stdin=input if input is not None else b"",
    )
    result = _wait(call)
    why = result.killed_reason or ("output" if result.truncated else "")
    return GitResult(
        code=None if why else result.exit_code,
        out=result.stdout_bytes,
        err=result.stderr.encode(),
        why=why,
    )


def _wait(call):
    """Run the coroutine to its end from synchronous code. Callers are threads without an
    event loop (sync_to_async, views, Celery); from inside a loop it runs on a thread of its
    own rather than failing."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(call)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, call).result()


__all__ = ["FLAGS", "GIT_DIR", "TREE", "GitResult", "SandboxError", "run"]
