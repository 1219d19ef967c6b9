"""Per-workspace quotas and neutral paths (assistant/quota.py): each workspace is an ext4 image of
its own on a loop device, so bytes and files are bounded by the kernel, the server's disk holds
at most the image, and the sandbox's mount table names no host path.

Needs root and loop devices; skipped (with the reason the start-up check gives) elsewhere. Every
test unmounts what it mounted."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from assistant import quota, repos
from assistant.models import Repository
from assistant.sandbox import SandboxLimits, run_sync
from assistant.tools import ToolContext, execute

pytestmark = pytest.mark.django_db

FAST = SandboxLimits(wall_seconds=20)
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "PATH": "/usr/bin:/bin",
    "GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@example.com",
    "GIT_COMMITTER_NAME": "A", "GIT_COMMITTER_EMAIL": "a@example.com",
}  # fmt: skip


@pytest.fixture
def quota_on(settings):
    settings.WORKSPACE_QUOTA_MB = 48
    settings.WORKSPACE_QUOTA_FILES = 3000
    if why := quota.probe():
        # Like the image tests: a machine that can't run these says so, it doesn't pass quietly.
        pytest.fail(f"no loop-mounted workspaces here: {why}", pytrace=False)
    return settings


@pytest.fixture
def parent(quota_on):
    # Searchable by the sandbox uid (as root it runs as nobody); not under /tmp/pytest-of-root.
    path = Path(tempfile.mkdtemp(prefix="tandem-quota-test-"))
    path.chmod(0o711)
    quota_on.REPOS_ROOT = path / "repos"
    yield path
    quota.release(path)  # whatever a failed test left mounted under it
    shutil.rmtree(path)


@pytest.fixture
def workspace(parent, conversation, team):
    origin = parent / "origin"
    origin.mkdir()
    (origin / "app.py").write_text("print('hi')\n")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=origin, env=GIT_ENV, check=True)
    repo = Repository.objects.create(team=team, name="demo", url=str(origin))
    ws = repos.create_workspace(conversation=conversation, repo=repo, branch="main")
    yield ws
    if Path(repos.workspace_path(workspace=ws)).exists():
        repos.remove_workspace(workspace=ws)


def _dir(ws) -> Path:
    return repos.workspace_path(workspace=ws).parent


def sh(ws, script: str):
    return run_sync(
        ["sh", "-c", script],
        worktree=repos.workspace_path(workspace=ws),
        git_dir=repos.git_dir(workspace=ws),
        limits=FAST,
    )


def test_a_workspace_is_a_file_system_of_its_own_and_goes_with_it(workspace):
    directory = _dir(workspace)
    assert os.path.ismount(directory)
    assert sorted(os.listdir(directory)) == ["git", "tree"]  # no lost+found in sight
    assert (repos.workspace_path(workspace=workspace) / "app.py").read_text() == "print('hi')\n"
    assert repos.status(workspace=workspace) == []
    image = quota.image_path(directory)
    repos.remove_workspace(workspace=workspace)
    assert not os.path.ismount(directory) and not directory.exists() and not image.exists()


def test_it_is_mounted_again_after_a_restart(workspace):
    directory = _dir(workspace)
    subprocess.run(["umount", str(directory)], check=True)  # as after a reboot
    assert not os.path.ismount(directory)
    assert (repos.workspace_path(workspace=workspace) / "app.py").exists()
    assert os.path.ismount(directory)


def test_writing_past_the_byte_quota_fails_with_enospc(workspace):
    image = quota.image_path(_dir(workspace))
    r = sh(workspace, "head -c 200000000 /dev/zero > big; echo exit=$?; rm big; echo hello > ok")
    assert "No space left on device" in r.stdout + r.stderr, r
    assert "exit=1" in r.stdout
    # The server's disk holds at most the image, and the workspace is usable again.
    assert image.stat().st_blocks * 512 <= 48 * 1024 * 1024
    assert (repos.workspace_path(workspace=workspace) / "ok").read_text() == "hello\n"


def test_too_many_files_fail_and_the_tool_says_so_in_words(workspace):
    script = (
        'python3 -c "import os\nn = 0\ntry:\n    for i in range(10000):\n'
        "        open(f'f{i}', 'w').close(); n += 1\nexcept OSError as e:\n"
        '    print(n, e.strerror)"'
    )
    r = sh(workspace, script)
    made, _, why = r.stdout.strip().partition(" ")
    assert why == "No space left on device", r
    assert 2000 < int(made) < 3000
    ctx = ToolContext(
        tree=repos.workspace_path(workspace=workspace),
        git_dir=repos.git_dir(workspace=workspace),
        limits=FAST,
    )
    from asgiref.sync import async_to_sync

    result = async_to_sync(execute)("write_file", {"path": "one-more.txt", "content": "x"}, ctx)
    assert not result.ok and "No space left on device" in result.output, result


def test_the_sandbox_mount_table_names_no_host_path(workspace):
    r = sh(workspace, "cat /proc/self/mountinfo; cat /proc/self/cgroup")
    assert r.ok, r
    text = r.stdout
    forbidden = [
        str(repos.repos_root()),
        os.path.realpath(repos.repos_root()),
        os.environ.get("TANDEM_DATA_DIR", "/nonexistent-data-dir"),
        str(workspace.uuid),
        str(workspace.repository.uuid),
        str(workspace.repository.team.uuid),
        str(workspace.conversation.uuid),
    ]
    for needle in forbidden:
        assert needle not in text, (needle, text)
    assert " /tree /workspace " in text and " /git /workspace/.git " in text


def test_the_start_up_check_says_what_the_kernel_does_not_enforce(monkeypatch, settings):
    from assistant import cgroups, checks

    monkeypatch.setattr(cgroups, "status", lambda: (0, "not root"))
    settings.WORKSPACE_QUOTA_MB = 0
    found = {w.id: w.msg for w in checks.sandbox_limits()}
    assert "no cgroup of their own: not root" in found["tandem.W001"]
    assert "no disk quota: switched off" in found["tandem.W002"]


def test_where_overlays_are_refused_the_check_says_so_and_kept_trees_are_copied(
    workspace, monkeypatch, settings
):
    from assistant import checks, environment, overlays

    tree = repos.workspace_path(workspace=workspace)
    kept = tree.parent.parent / "kept"  # any folder on another file system than the workspace
    kept.mkdir()
    (kept / ".complete").write_text("{}\n")
    assert environment._method(kept, tree) == "overlay"
    assert "tandem.W004" not in {w.id for w in checks.sandbox_limits()}
    monkeypatch.setattr(overlays, "_refused", ["overlay mounts are refused here (test)"])
    assert environment._method(kept, tree) == "copy"
    found = {w.id: w.msg for w in checks.sandbox_limits()}
    assert "copied into workspaces with a quota: overlay mounts are refused" in found["tandem.W004"]
