"""Setup scripts and prepared trees: a repository's environment, made once and reused.

A repository's ``setup_script`` runs in the sandbox (the repository's image, the workspace's
tree at ``/workspace``) before the agent's first command of a conversation, with egress to the
package registries alone (``egress``), under :data:`settings.SETUP_SECONDS`, the per-call cgroup
and the workspace's quota. Its output streams to the conversation as a tool call named
:data:`CALL_NAME` (``agent`` records it; the model never sees it).

**Prepared trees.** What setup made in the environment directories (``SETUP_ENV_DIRS``:
``.venv``, ``node_modules``) is kept per repository under ``prepared/KEY/``, where KEY hashes the
script, the image (name and build time), the repository's "Rebuild" count and the lock/manifest
files at the top of the tree (:data:`MANIFESTS`, read in the sandbox). A new conversation whose
key is kept starts from it instead of running the setup:

- **copy-on-write** (``cp --reflink``) where the file system can (btrfs, XFS);
- else, when the server runs as root (the sandbox as ``nobody``) and the workspace is on the
  same file system, a **hardlinked copy**: new directories, the same file inodes. The kept
  files belong to root and have no write bit, so the sandbox's uid can't change one in place
  (which would change it in the kept tree and in every workspace linked to it) nor chmod it;
  it may delete or replace them (``pip install -U``), which unlinks its own name only. The
  directories get the sandbox uid's ACL so it can;
- else, for a workspace with a disk quota (a file system of its own: nothing can be linked into
  it) on a root server, an **overlay**: the kept folder mounted read-only under a writable
  upper layer in the workspace's own file system, so what the agent writes is counted by its
  quota and never reaches the kept tree (``overlays``);
- else (a server running as an ordinary user is the file's owner and could chmod it back; a
  host that refuses overlays) a plain copy.

Capturing runs in the sandbox (the kept folder bound at ``/prepared``); the server then seals
the folder (root's, read-only files) walking it through file descriptors without following
links, as ``sandbox._grant_worktree`` does. Restoring reads only the kept folder the server
sealed and writes only names that did not exist in a tree no command has run in yet.

Idle kept trees (no conversation started from one for ``PREPARED_TREE_IDLE_DAYS``, and no
workspace left that started from it: an overlay may have it as its lower layer) are removed by
a beat task (:func:`remove_idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from . import egress, images, overlays, repos, sandbox
from .models import Repository, Workspace
from .sandbox import SandboxLimits

log = logging.getLogger(__name__)

CALL_NAME = "setup"  # the tool call that shows a setup in the conversation
MANIFESTS = (
    "requirements*.txt", "pyproject.toml", "poetry.lock", "uv.lock", "Pipfile.lock",
    "package.json", "package-lock.json", "yarn.lock", "pnpm-lock.yaml",
)  # fmt: skip
PREPARED = "/prepared"  # where the kept folder is bound while capturing
_USED = ".last-used"  # touched at each restore: the idle clock
_DONE = ".complete"
_COMBINED = 'PYTHONUNBUFFERED=1 exec /bin/sh -ec "$1" 2>&1'
# Lists the manifests at the top of the tree with their digests (regular files only).
_DIGEST = """
for f in %s; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then sha256sum -- "$f"; fi
done
true
""" % " ".join(MANIFESTS)  # noqa: UP031 - a fixed shell script, globs unquoted on purpose
_PROPOSE = r"""
import json, os, re, sys
def read(p):
    if os.path.islink(p) or not os.path.isfile(p):
        return None
    with open(p, encoding="utf-8", errors="replace") as f:
        return f.read(65536)
text = read(".tandem/setup.sh")
if text is not None:
    print(json.dumps({"from": ".tandem/setup.sh", "script": "sh .tandem/setup.sh\n"}))
    sys.exit(0)
for p in (".devcontainer/devcontainer.json", ".devcontainer.json"):
    text = read(p)
    if text is None:
        continue
    text = re.sub(r"(?m)^\s*//.*$", "", text)
    try:
        cmd = json.loads(text).get("postCreateCommand")
    except (ValueError, AttributeError):
        continue
    if isinstance(cmd, list):
        cmd = " ".join(cmd)
    elif isinstance(cmd, dict):
        cmd = "\n".join(v if isinstance(v, str) else " ".join(v) for v in cmd.values())
    if isinstance(cmd, str) and cmd.strip():
        print(json.dumps({"from": p, "script": cmd.strip() + "\n"}))
        sys.exit(0)
print("{}")
"""


def env_dirs() -> list[str]:
    """The environment directories' names (top-level, no slashes, no dots-only names)."""
    return [
        name
        for name in settings.SETUP_ENV_DIRS
        if name and "/" not in name and name.strip(".") and "\0" not in name
    ]


def prepared_root(repo: Repository) -> Path:
    return repos.mirror_path(repo=repo).parent / "prepared"


@dataclass
class Outcome:
    """What preparing a workspace did: ``ran`` the setup, ``reused`` a kept tree, or neither
    (no script); ``ok``; ``output``: the text the conversation shows."""

    ran: bool = False
    reused: bool = False
    ok: bool = True
    output: str = ""
    exit_code: int | None = None
    duration_ms: int = 0
    truncated: bool = False
    key: str = ""


def needs_setup(workspace: Workspace) -> bool:
    return bool(workspace.repository.setup_script.strip()) and not workspace.environment


# --- Keys ----------------------------------------------------------------------------------------


async def manifest_digest(workspace: Workspace, image: str) -> str:
    """The lock/manifest files at the top of the tree, with their digests, read in the sandbox."""
    result = await sandbox.run(
        ["/bin/sh", "-c", _DIGEST],
        worktree=repos.workspace_path(workspace=workspace),
        limits=SandboxLimits(wall_seconds=30),
        image=image,
    )
    if not result.ok:
        raise sandbox.SandboxError(
            f"reading the lock files failed: {(result.stderr or result.stdout).strip()[-300:]}"
        )
    return result.stdout


def key_for(repo: Repository, image: str, digest: str) -> str:
    built = "" if image == images.HOST else images.get(image).built_at
    parts = [repo.setup_script, image, built, str(repo.environment_generation), digest]
    parts.append(",".join(env_dirs()))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


# --- Running the setup --------------------------------------------------------------------------


async def run_setup(
    workspace: Workspace, image: str, on_output: Callable[[bytes], None] | None = None
) -> Outcome:
    """Run the repository's setup script in the workspace, with registry-only egress."""
    repo = workspace.repository
    limits = dataclasses.replace(
        SandboxLimits(),
        wall_seconds=settings.SETUP_SECONDS,
        cpu_seconds=settings.SETUP_SECONDS,
        max_file_mb=1024,
    )
    argv = ["/bin/sh", "-c", _COMBINED, "sh", repo.setup_script]
    tree = repos.workspace_path(workspace=workspace)
    system = sandbox._system_root(image)
    note = egress.forwarder_missing(system)
    if note and on_output is not None:
        on_output((note + "\n").encode())
    async with contextlib.AsyncExitStack() as stack:
        folder, traffic = None, egress.Traffic()
        if not note:
            folder, traffic = await stack.enter_async_context(egress.channel())
            argv = egress.wrap(argv)
        result = await sandbox.run(
            argv,
            worktree=tree,
            git_dir=repos.git_dir(workspace=workspace),
            limits=limits,
            image=image,
            env=egress.proxy_env() if folder is not None else None,
            egress=folder,
            on_output=on_output,
        )
    output = (note + "\n" if note else "") + result.stdout + result.stderr
    ok = result.ok
    explanation = explain(result, limits, traffic)
    if explanation:
        output = output.rstrip("\n") + "\n\n" + explanation
    return Outcome(
        ran=True,
        ok=ok,
        output=output,
        exit_code=result.exit_code,
        duration_ms=result.duration_ms,
        truncated=result.truncated,
    )


def explain(result: sandbox.SandboxResult, limits: SandboxLimits, traffic: egress.Traffic) -> str:
    """The failure in words: what stopped it, its exit code, its last lines, what the proxy
    refused. Empty when it succeeded."""
    from .tools.base import sandbox_failure

    refused = traffic.refusals_sentence()
    if result.ok:
        return ""
    why = sandbox_failure(result, limits)
    head = (
        f"The setup script was {why}."
        if why
        else f"The setup script failed with exit code {result.exit_code}."
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    tail = "\n".join("    " + line for line in lines[-5:])
    parts = [head]
    if refused:
        parts.append(refused + " Only the package registries are reachable from setup.")
    if tail:
        parts.append("Its last lines:\n" + tail)
    return "\n".join(parts)


# --- Prepared trees -----------------------------------------------------------------------------


def kept(repo: Repository, key: str) -> Path | None:
    folder = prepared_root(repo) / key
    return folder if (folder / _DONE).is_file() else None


async def capture(workspace: Workspace, image: str, key: str) -> bool:
    """Keep the workspace's environment directories as the prepared tree ``key`` (copied in
    the sandbox, then sealed by the server). False when there was nothing to keep."""
    repo = workspace.repository
    root = prepared_root(repo)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.staging-", dir=root))
    try:
        staging.chmod(0o700)
        if os.geteuid() == 0:
            os.chown(staging, sandbox.SANDBOX_UID, sandbox.SANDBOX_GID)
        names = env_dirs()
        script = (
            'for d in "$@"; do if [ -d "$d" ] && [ ! -L "$d" ]; then cp -a -- "$d" %s/; fi; done'
        )
        result = await sandbox.run(
            ["/bin/sh", "-c", script % PREPARED, "sh", *names],
            worktree=repos.workspace_path(workspace=workspace),
            limits=dataclasses.replace(
                SandboxLimits(), wall_seconds=300, cpu_seconds=300, max_file_mb=1024
            ),
            image=image,
            rw_binds=[(staging, PREPARED)],
        )
        if not result.ok:
            log.warning("Keeping the prepared tree failed: %s", result.stderr.strip()[-500:])
            return False
        await asyncio.to_thread(_seal, staging)
        if not any(os.path.lexists(staging / n) for n in names):
            return False
        (staging / _DONE).write_text(json.dumps({"key": key, "image": image}) + "\n")
        (staging / _USED).touch()
        staging.chmod(0o755)
        try:
            os.rename(staging, root / key)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return True  # another conversation kept the same one first
        staging = None  # type: ignore[assignment]
        return True
    finally:
        if staging is not None:
            _remove(staging)


def _seal(folder: Path) -> None:
    """The kept tree as the server's, read-only files and 0755 directories, walked through
    file descriptors (never following a link the setup made)."""
    uid, gid = os.getuid(), os.getgid()
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    for _top, _dirs, files, dirfd in os.fwalk(folder, follow_symlinks=False):
        os.fchown(dirfd, uid, gid)
        os.fchmod(dirfd, 0o755)
        for name in files:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
                continue
            if not stat.S_ISREG(st.st_mode):
                os.unlink(name, dir_fd=dirfd)  # fifos, sockets: nothing an environment needs
                continue
            fd = os.open(name, flags, dir_fd=dirfd)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & 0o555)
            finally:
                os.close(fd)


def restore(workspace: Workspace, folder: Path) -> str:
    """Put the kept tree's environment directories into the workspace's fresh tree; how
    ("reflink", "overlay", "hardlink" or "copy")."""
    tree = repos.workspace_path(workspace=workspace)
    names = [n for n in env_dirs() if os.path.isdir(folder / n) and not os.path.islink(folder / n)]
    for name in names:
        if os.path.lexists(tree / name):  # the repository has one of its own: setup's business
            raise FileExistsError(name)
    how = _method(folder, tree)
    if how == "overlay":
        try:
            overlays.mount(tree.parent, folder, names)
        except overlays.OverlayError as exc:
            log.warning("Copying the prepared tree instead: %s", exc)
            how = "copy"
    if how != "overlay":
        for name in names:
            _copy(folder / name, tree / name, how)
            if os.geteuid() == 0:
                _grant_directories(tree / name, sandbox.SANDBOX_UID)
    with contextlib.suppress(OSError):
        (folder / _USED).touch()
    return how


def _method(folder: Path, tree: Path) -> str:
    if _can_reflink(folder, tree):
        return "reflink"
    if os.path.ismount(tree.parent) and not overlays.unavailable_reason():
        return "overlay"  # a workspace with a quota: a file system of its own (overlays.py)
    if os.geteuid() == 0 and os.stat(folder).st_dev == os.stat(tree).st_dev:
        return "hardlink"
    return "copy"


def _can_reflink(folder: Path, tree: Path) -> bool:
    """Whether a copy-on-write clone works from the kept folder into the tree (one probe)."""
    import fcntl

    ficlone = 0x40049409
    probe_src = folder / _DONE
    probe_dst = tree / f".tandem-reflink-{uuid.uuid4().hex}"
    try:
        with open(probe_src, "rb") as src, open(probe_dst, "xb") as dst:
            fcntl.ioctl(dst.fileno(), ficlone, src.fileno())
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe_dst.unlink()


def _copy(src: Path, dst: Path, how: str) -> None:
    flag = {"reflink": "--reflink=always", "hardlink": "--link", "copy": "--reflink=never"}[how]
    # -P: links copied as links, never followed; --no-preserve: the sandbox's uid gets the
    # copy's directories through the ACL below (hardlinks), or owns nothing special (copies).
    argv = ["cp", "-R", "-P", "--preserve=mode,timestamps,links", flag, "--", str(src), str(dst)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env={"LC_ALL": "C"})
    if done.returncode:
        raise OSError(f"copying the prepared tree failed: {done.stderr.strip()[-300:]}")


def _grant_directories(path: Path, uid: int) -> None:
    """The sandbox's uid may add and remove names in the restored directories (not write the
    linked files: they stay root's and read-only)."""
    acl = sandbox._acl_for(0o40755, uid)
    for _top, _dirs, _files, dirfd in os.fwalk(path, follow_symlinks=False):
        os.setxattr(dirfd, sandbox._ACL_ACCESS, acl)
        os.setxattr(dirfd, sandbox._ACL_DEFAULT, acl)


def exclude_env_dirs(workspace: Workspace) -> None:
    """The environment directories never show in the turn's diff or the patch: listed in the
    workspace's own git directory's info/exclude (the server's, not the tree)."""
    info = repos.git_dir(workspace=workspace) / "info"
    info.mkdir(exist_ok=True)
    exclude = info / "exclude"
    current = exclude.read_text() if exclude.is_file() and not exclude.is_symlink() else ""
    wanted = [f"/{name}/" for name in env_dirs()]
    missing = [line for line in wanted if line not in current.splitlines()]
    if missing:
        exclude.write_text(current + ("" if current.endswith("\n") or not current else "\n")
                           + "\n".join(missing) + "\n")  # fmt: skip


def _remove(path: Path) -> None:
    def unlock(func, failed, _exc) -> None:
        parent = os.path.dirname(failed)
        if not os.path.islink(parent):
            os.chmod(parent, 0o700)
        func(failed)

    shutil.rmtree(path, onerror=lambda func, failed, exc: unlock(func, failed, exc))


def remove_idle(older_than_days: float | None = None) -> int:
    """Remove the kept trees no conversation started from lately; how many."""
    days = settings.PREPARED_TREE_IDLE_DAYS if older_than_days is None else older_than_days
    cutoff = time.time() - days * 86400
    removed = 0
    for repo in Repository.objects.select_related("team"):
        root = prepared_root(repo)
        if not root.is_dir():
            continue
        # A workspace started from a kept tree may have it as its overlay's lower layer: kept
        # while that workspace exists, however long ago it started.
        in_use = set(
            Workspace.objects.filter(repository=repo).values_list("environment", flat=True)
        )
        for folder in root.iterdir():
            if folder.name in in_use:
                continue
            if folder.name.startswith("."):
                # A staging folder left by a crash: old enough, it is nobody's.
                try:
                    idle = folder.lstat().st_mtime < cutoff
                except OSError:
                    continue
            else:
                try:
                    idle = (folder / _USED).stat().st_mtime < cutoff
                except OSError:
                    idle = True
            if idle:
                _remove(folder)
                removed += 1
    return removed


async def propose(workspace: Workspace, image: str) -> dict[str, str]:
    """What the repository suggests as its setup (``{"from", "script"}``), read in the sandbox
    from the workspace's tree; {} when nothing."""
    if egress.forwarder_missing(sandbox._system_root(image)):
        return {}  # no python3 in the image to read devcontainer.json with
    result = await sandbox.run(
        ["python3", "-I", "-S", "-c", _PROPOSE],
        worktree=repos.workspace_path(workspace=workspace),
        limits=SandboxLimits(wall_seconds=20),
        image=image,
    )
    try:
        found = json.loads(result.stdout or "{}")
    except ValueError:
        return {}
    if not isinstance(found, dict) or not isinstance(found.get("script"), str):
        return {}
    return {"from": str(found.get("from", "")), "script": found["script"][:10000]}
