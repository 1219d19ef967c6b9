"""Server-side git on a workspace runs in the sandbox (issue 11 A and E).

The agent's processes can change the tree while the server reads it. These tests play the
agent: a process started in the sandbox the way the run_command tool starts one swaps a file and
a symlink to a host file, over and over, while the server snapshots, diffs and makes patches.
Nothing of the host may end up in the workspace's objects or in what the server returns."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

from assistant import repos
from assistant.models import Workspace
from assistant.repos import RepoError
from assistant.tools.base import ToolContext
from assistant.tools.shell import run_command
from tests import test_repos
from tests.helpers import wait_until
from tests.test_repos import GIT_ENV, git, tree

# test_repos's fixtures: a local origin, its repository row and a workspace of it.
root, origin, repo, workspace = (
    test_repos.root,
    test_repos.origin,
    test_repos.repo,
    test_repos.workspace,
)

pytestmark = pytest.mark.django_db

# Runs in the sandbox: for every (decoy, link) pair, exchange the two names as fast as it can
# (renameat2 RENAME_EXCHANGE is atomic, so at every instant one name is a regular file and the
# other a symlink to a host path), for a bounded time.
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
pairs = [line.split("\t") for line in sys.argv[1].splitlines()]
for decoy, link, target, size in pairs:
    with open(decoy, "wb") as fh:
        fh.write(b"d" * int(size))
    os.symlink(target, link)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
swaps = 0
while time.monotonic() < end:
    for decoy, link, _, _ in pairs:
        libc.renameat2(-100, decoy.encode(), -100, link.encode(), 2)  # AT_FDCWD, RENAME_EXCHANGE
        swaps += 1
print("swaps", swaps)
"""
SWAP_SECONDS = 10


def _all_objects(ws: Workspace) -> bytes:
    out = subprocess.run(
        ["git", f"--git-dir={repos.git_dir(workspace=ws)}", "cat-file", "--batch-all-objects",
         "--batch", "--unordered"],
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        check=True,
    )  # fmt: skip
    return out.stdout


def test_a_file_swapped_for_a_symlink_never_leaks_host_bytes(workspace, tmp_path, monkeypatch):
    work = tree(workspace)
    # A host file the sandbox must never see, larger than the decoy so a read of the decoy's
    # size through the link would succeed.
    canary = tmp_path / "host-canary"
    canary.write_bytes(secrets.token_hex(2048).encode())
    # The server's environment: a marker git on the host would inherit (HOME is passed through),
    # and the test process's own environment as /proc/<pid>/environ shows it.
    marker = "tandem-marker-" + secrets.token_hex(8)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", f"/tmp/{marker}")
    server_environ = Path(f"/proc/{os.getpid()}/environ").read_bytes()
    pairs = [
        ("leak-canary.txt", ".swap-canary", str(canary), 64),
        ("leak-self-environ.txt", ".swap-self", "/proc/self/environ", 96),
        ("leak-server-environ.txt", ".swap-server", f"/proc/{os.getpid()}/environ", 32),
    ]
    spec = "\n".join("\t".join(map(str, pair)) for pair in pairs)
    command = f"python3 -c {_sh_quote(SWAPPER)} {_sh_quote(spec)} {SWAP_SECONDS}"
    ctx = ToolContext(tree=work, git_dir=repos.git_dir(workspace=workspace))
    result: dict = {}
    swapper = threading.Thread(
        target=lambda: result.update(r=asyncio.run(run_command(ctx, {"command": command})))
    )
    swapper.start()
    # A sandbox takes seconds to start on a loaded machine: waited for, not bounded.
    wait_until(
        lambda: os.path.lexists(work / ".swap-server"), what="the swapper started", timeout=60
    )

    outputs: list[bytes] = []
    calls = failures = 0
    end = time.monotonic() + SWAP_SECONDS - 1
    while time.monotonic() < end and swapper.is_alive():
        try:
            outputs.append(repos.snapshot(workspace=workspace).encode())
            outputs.append(repos.patch(workspace=workspace))
            outputs.append(repos.diff(workspace=workspace).encode())
        except RepoError:
            failures += 1  # a read that went wrong is fine; a read of host bytes is not
        calls += 1
    swapper.join(timeout=SWAP_SECONDS + 30)
    assert "swaps" in result["r"].output, result["r"].output
    assert calls >= 10

    secrets_seen = {
        "the host canary": canary.read_bytes()[:32],
        "the server's HOME marker": marker.encode(),
        "the server's environment": server_environ[:32],
    }
    haystacks = {"a git object": _all_objects(workspace), "an output": b"\n".join(outputs)}
    leaks = [
        f"{what} leaked into {where}"
        for where, data in haystacks.items()
        for what, needle in secrets_seen.items()
        if needle in data
    ]
    print(f"{calls} rounds, {failures} failed; swapper: {result['r'].output.strip()}")
    assert not leaks, f"{leaks} ({calls} rounds, {failures} failed)"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _gitlinks(ws: Workspace, tree_id: str) -> list[str]:
    out = git(repos.git_dir(workspace=ws), "ls-tree", "-r", tree_id)
    return [line for line in out.splitlines() if line.startswith("160000")]


def test_a_nested_git_file_pointing_elsewhere_is_never_followed(workspace, tmp_path):
    # Another repository the server can read, and a .git file in the tree that names it.
    secret = tmp_path / "secret"
    secret.mkdir()
    git(secret, "init", "-q")
    (secret / "passwords.txt").write_text("hunter2-other-team\n")
    git(secret, "add", "-A")
    git(secret, "commit", "-qm", "secret")
    secret_head = git(secret, "rev-parse", "HEAD").strip()
    work = tree(workspace)
    (work / "vendor" / "lib").mkdir(parents=True)
    (work / "vendor" / "lib" / ".git").write_text(f"gitdir: {secret / '.git'}\n")
    (work / "vendor" / "lib" / "code.py").write_text("print('plain')\n")
    # And one naming the workspace's own git directory, which does exist in the sandbox.
    (work / "own").mkdir()
    (work / "own" / ".git").write_text("gitdir: /workspace/.git\n")
    (work / "own" / "file.txt").write_text("own\n")

    snap = repos.snapshot(workspace=workspace)
    patch = repos.patch(workspace=workspace)
    sha = repos.commit_all(workspace=workspace, message="m", author_name="A", author_email="a@b.c")

    assert _gitlinks(workspace, snap) == [] and _gitlinks(workspace, sha) == []
    text = patch.decode()
    assert secret_head not in text and "hunter2" not in text and "gitdir" not in text
    assert "+print('plain')" in text and "b/vendor/lib/code.py" in text
    assert "b/own/file.txt" in text and ".git" not in text
    assert secret_head not in git(repos.git_dir(workspace=workspace), "ls-tree", "-r", sha)


def test_an_empty_nested_repository_does_not_break_snapshots(workspace):
    work = tree(workspace)
    (work / "tool").mkdir()
    git(work / "tool", "init", "-q")  # no commit: git add would refuse the whole snapshot
    (work / "tool" / "main.c").write_text("int main(void) { return 0; }\n")
    (work / "empty").mkdir()
    git(work / "empty", "init", "-q")  # nothing in it but its .git
    (work / "README.md").write_text("edited\n")

    start = repos.snapshot(workspace=workspace)
    assert _gitlinks(workspace, start) == []
    text = repos.diff(workspace=workspace)
    assert "b/tool/main.c" in text and "+edited" in text and "empty" not in text
    assert ".git" not in text
    repos.commit_all(workspace=workspace, message="m", author_name="A", author_email="a@b.c")
    assert repos.patch(workspace=workspace)
    # A nested repository inside a nested repository: plain files all the way down.
    (work / "tool" / "deeper").mkdir()
    git(work / "tool" / "deeper", "init", "-q")
    (work / "tool" / "deeper" / "x.txt").write_text("x\n")
    later = repos.snapshot(workspace=workspace)
    assert _gitlinks(workspace, later) == []
    names = repos.diff_stat(workspace=workspace, old=start, new=later)
    assert [s.path for s in names] == ["tool/deeper/x.txt"]
