"""A disk and file-count quota per workspace, enforced by the kernel: each workspace directory is
a file system of its own, an ext4 image on a loop device.

``<workspaces>/<uuid>.img`` is a sparse file of ``WORKSPACE_QUOTA_MB``, formatted with room for
``WORKSPACE_QUOTA_FILES`` inodes and mounted (``nosuid,nodev``) at ``<workspaces>/<uuid>/``
before the workspace is cloned into it; the clone's git directory and working tree both live on
it. A command that writes past either limit gets ENOSPC ("No space left on device") while the
server's own disk holds at most the image. The image is only as large on disk as what was
written into it.

It also keeps host paths out of the sandbox: ``/proc/self/mountinfo`` inside shows the workspace
as ``/tree`` on ``/dev/loopN`` (and its git directory as ``/git``), not a path under the data
directory with team, repository and workspace ids.

Mounted when the workspace is made (:func:`prepare`), again whenever it is used after a restart
or reboot (:func:`ensure_mounted`, cheap when mounted), unmounted and the image deleted when it
is removed (:func:`release`). Loop mounts need root and a host that allows them (many containers
refuse them): where they can't be made, :func:`unavailable_reason` says why, the start-up check
warns once, and workspaces are plain directories on the server's disk as before. A workspace
made before the quota existed (no image) stays a plain directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

MKFS = "/usr/sbin/mkfs.ext4"
MOUNT = "/usr/bin/mount"
UMOUNT = "/usr/bin/umount"
OPTIONS = "loop,nosuid,nodev,noatime"
_lock = threading.Lock()
_refused: list[str] = []  # why loop mounts failed in this process (found at the first attempt)


class QuotaError(Exception):
    """The workspace's file system could not be made or mounted."""


def image_path(workspace_dir: Path) -> Path:
    return workspace_dir.with_name(workspace_dir.name + ".img")


def unavailable_reason() -> str:
    """Why workspaces get no quota here, or "" when they do (as far as is known without trying)."""
    if settings.WORKSPACE_QUOTA_MB <= 0:
        return "switched off (WORKSPACE_QUOTA_MB=0)"
    if _refused:
        return _refused[0]
    if os.geteuid() != 0:
        return "the server does not run as root, so it can't mount loop devices"
    for tool in (MKFS, MOUNT, UMOUNT):
        if not os.access(tool, os.X_OK):
            return f"{tool} is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "the host has no loop devices (/dev/loop-control)"
    return ""


def _run(*argv: str, timeout: float = 60) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={})
    if done.returncode:
        raise QuotaError(f"{Path(argv[0]).name} failed: {done.stderr.strip() or done.returncode}")


def prepare(workspace_dir: Path) -> bool:
    """Make ``workspace_dir`` (which must not exist yet) a file system of its own; False when the
    host can't (it is then left for the caller to create, a plain directory)."""
    if unavailable_reason():
        return False
    image = image_path(workspace_dir)
    workspace_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(image, "xb") as f:
            f.truncate(settings.WORKSPACE_QUOTA_MB * 1024 * 1024)  # sparse
        _run(
            MKFS, "-q", "-F", "-m", "0", "-b", "4096",
            "-N", str(max(settings.WORKSPACE_QUOTA_FILES, 64)),
            "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
            str(image),
        )  # fmt: skip
        workspace_dir.mkdir()
        _mount(image, workspace_dir)
    except (OSError, QuotaError, subprocess.TimeoutExpired) as exc:
        _undo(workspace_dir, image)
        if isinstance(exc, QuotaError) and _refused_by_host(str(exc)):
            with _lock:
                if not _refused:
                    _refused.append(f"loop mounts are refused here ({exc})")
                    log.warning("workspaces get no disk quota: %s", _refused[0])
            return False
        raise QuotaError(f"The workspace's file system could not be made: {exc}") from exc
    return True


def _refused_by_host(message: str) -> bool:
    words = ("permission denied", "operation not permitted", "must be superuser", "loop device")
    return any(w in message.lower() for w in words)


def _mount(image: Path, workspace_dir: Path) -> None:
    _run(MOUNT, "-t", "ext4", "-o", OPTIONS, str(image), str(workspace_dir))
    with contextlib.suppress(FileNotFoundError):
        (workspace_dir / "lost+found").rmdir()  # else it shows in the tree; e2fsck remakes it


def _undo(workspace_dir: Path, image: Path) -> None:
    if os.path.ismount(workspace_dir):
        _umount(workspace_dir)
    with contextlib.suppress(OSError):
        workspace_dir.rmdir()
    with contextlib.suppress(FileNotFoundError):
        image.unlink()


def _umount(workspace_dir: Path) -> None:
    try:
        _run(UMOUNT, str(workspace_dir))
    except QuotaError:  # busy (a sandbox still running in it): detach now, freed when done
        _run(UMOUNT, "-l", str(workspace_dir))


def ensure_mounted(workspace_dir: Path) -> None:
    """Mount the workspace's image if it has one and it is not mounted (after a restart)."""
    image = image_path(workspace_dir)
    if not image.exists() or os.path.ismount(workspace_dir):
        return
    # Daphne and the workers may all want it first after a restart: one mounts, under a lock
    # on the image shared by every process.
    with _lock, open(image, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if os.path.ismount(workspace_dir):
            return
        workspace_dir.mkdir(exist_ok=True)
        if any(os.scandir(workspace_dir)):  # never mount over files (something is wrong)
            raise QuotaError(f"{workspace_dir} is not empty; its image was not mounted")
        _mount(image, workspace_dir)


def release(path: Path) -> None:
    """Unmount the file system of the workspace at ``path`` (or of every workspace under it: a
    repository's directory) and delete its image; nothing of its files is walked."""
    path = Path(os.path.realpath(path))
    for mounted in sorted(_mounts_under(path), key=len, reverse=True):
        _umount(Path(mounted))
    with contextlib.suppress(FileNotFoundError):
        image_path(path).unlink()


def _mounts_under(path: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
            point = line.split()[4]
            for raw, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                point = point.replace(raw, char)
            if point == str(path) or point.startswith(str(path) + "/"):
                found.append(point)
    return found


def probe() -> str:
    """Try a small image for real (``manage.py check``): why it failed, or ""."""
    if why := unavailable_reason():
        return why
    tmp = Path(tempfile.mkdtemp(prefix="tandem-quota-probe-"))
    try:
        _run(MKFS, "-q", "-F", "-N", "64", str(_sparse(tmp / "probe.img", 8)))
        (tmp / "mnt").mkdir()
        _mount(tmp / "probe.img", tmp / "mnt")
        _umount(tmp / "mnt")
        return ""
    except (OSError, QuotaError) as exc:
        return f"loop mounts are refused here ({exc})"
    finally:
        if os.path.ismount(tmp / "mnt"):
            with contextlib.suppress(QuotaError):
                _umount(tmp / "mnt")
        shutil.rmtree(tmp, ignore_errors=True)


def _sparse(path: Path, mb: int) -> Path:
    with open(path, "xb") as f:
        f.truncate(mb * 1024 * 1024)
    return path
