"""A kept prepared tree under a writable overlay, for workspaces with a disk quota.

A workspace with a quota is a file system of its own (``quota``), so nothing can be hardlinked
or cloned into it from the kept tree, and copying 20,000 files costs a second or more. Instead
the server (root) mounts an overlay at ``tree/NAME`` (``.venv``, ``node_modules``): the kept
folder as its read-only lower layer, an upper and a work directory in the workspace's own file
system, beside the tree and outside the sandbox's view (``<workspace>/env/``). So:

- what the agent writes into ``.venv`` lands in the workspace's upper layer, counted by its
  quota; the kept tree (shared by every conversation of the repository) is never written;
- the kept files stay root's and read-only, as with hardlinks: the sandbox's uid can't change
  one in place or chmod it, but may delete or replace it (the upper layer holds a skeleton of
  the kept directories with the sandbox uid's ACL, so the merged directories are its to write);
- a start costs one ``mkdir`` per kept directory, not one copy per file.

bubblewrap 0.8 (Debian 12) has no ``--overlay``; the mount is made by the server on the host,
and the sandbox's recursive bind of the tree carries it in. Every path is given to the kernel
as ``/proc/self/fd/N`` of a directory opened without following links: nothing the agent planted
can redirect the mount, and the sandbox's ``/proc/self/mountinfo`` shows no host path.

What is mounted is written to ``<workspace>/env/mounts.json`` (the server's, outside the tree) and
mounted again after a restart or reboot (:func:`ensure`, cheap when mounted); ``quota.release``
unmounts it with the workspace. Where the kernel refuses overlays (not root, no overlay file
system, a container), :func:`unavailable_reason` says why, the start-up check warns, and the
prepared tree is copied instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from . import sandbox

log = logging.getLogger(__name__)

ENV = "env"  # <workspace>/env: upper and work directories, and what is mounted
_RECORD = "mounts.json"
_MS_NOSUID, _MS_NODEV = 2, 4
_lock = threading.Lock()
_refused: list[str] = []  # why an overlay could not be mounted in this process


class OverlayError(Exception):
    """The overlay could not be mounted."""


def unavailable_reason() -> str:
    """Why prepared trees are copied rather than overlaid here, or "" when they can be."""
    if _refused:
        return _refused[0]
    if os.geteuid() != 0:
        return "the server does not run as root, so it can't mount overlays"
    try:
        with open("/proc/filesystems") as f:
            if not any(line.split()[-1:] == ["overlay"] for line in f):
                return "the kernel has no overlay file system"
    except OSError as exc:
        return f"/proc/filesystems is unreadable ({exc.strerror})"
    return ""


def _libc_mount(target_fd: int, fds: tuple[int, int, int]) -> None:
    lower, upper, work = (f"/proc/self/fd/{fd}" for fd in fds)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    libc = ctypes.CDLL(None, use_errno=True)
    done = libc.mount(
        b"tandem-env", f"/proc/self/fd/{target_fd}".encode(), b"overlay",
        _MS_NOSUID | _MS_NODEV, options,
    )  # fmt: skip
    if done != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)


def _mount_one(lower: Path, upper: Path, work: Path, target: Path) -> None:
    fds: list[int] = []
    try:
        for path in (lower, upper, work, target):
            fds.append(_open_dir(path))
        _libc_mount(fds[3], (fds[0], fds[1], fds[2]))
    finally:
        for fd in fds:
            os.close(fd)


def _skeleton(lower: Path, upper: Path, uid: int) -> None:
    """The kept tree's directories (no files) in the upper layer, each writable by ``uid``
    through its ACL, so the merged directories are the sandbox's to add and remove names in.
    The kept folder is the server's own, sealed (``environment._seal``): walked without
    following links."""
    acl = sandbox._acl_for(0o40755, uid)
    upper.mkdir(mode=0o755)
    for top, dirs, _files, dirfd in os.fwalk(lower, follow_symlinks=False):
        mirror = upper / os.path.relpath(top, lower)
        for name in dirs:
            # fwalk lists links to directories among them (a venv's lib64 -> lib): a directory
            # made for one in the upper layer would hide the link.
            if stat.S_ISDIR(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                (mirror / name).mkdir(mode=0o755)
        fd = _open_dir(mirror)
        try:
            os.setxattr(f"/proc/self/fd/{fd}", sandbox._ACL_ACCESS, acl)
            os.setxattr(f"/proc/self/fd/{fd}", sandbox._ACL_DEFAULT, acl)
        finally:
            os.close(fd)


def mount(workspace_dir: Path, kept: Path, names: list[str]) -> None:
    """Mount ``kept/NAME`` under an overlay at ``tree/NAME`` of the workspace, for each name,
    or none of them. The tree is fresh (no command has run in it): the mount points are made
    here."""
    if why := unavailable_reason():
        raise OverlayError(why)
    env = workspace_dir / ENV
    tree = workspace_dir / "tree"
    with _lock:
        env.mkdir(mode=0o700, exist_ok=True)
        for layer in ("upper", "work"):
            (env / layer).mkdir(mode=0o700, exist_ok=True)
        record = _read_record(env)
        done: list[Path] = []
        try:
            for name in names:
                upper, work, target = env / "upper" / name, env / "work" / name, tree / name
                for path in (upper, work):
                    if path.exists():
                        _remove(path)
                _skeleton(kept / name, upper, sandbox.SANDBOX_UID)
                work.mkdir(mode=0o700)
                target.mkdir(mode=0o755)  # raises if the tree has one (a fresh tree has not)
                try:
                    _mount_one(kept / name, upper, work, target)
                except OSError:
                    target.rmdir()
                    raise
                done.append(target)
                record[name] = str(kept / name)
        except OSError as exc:
            for target in done:  # all or nothing: the caller copies them all instead
                with contextlib.suppress(OSError):
                    _umount(target)
                    target.rmdir()
            if exc.errno in (errno.EPERM, errno.EACCES, errno.ENODEV, errno.EINVAL):
                _refuse(f"overlay mounts are refused here ({exc.strerror})")
            raise OverlayError(f"the overlay could not be mounted: {exc.strerror}") from exc
        _write_record(env, record)


def ensure(workspace_dir: Path) -> None:
    """Mount again what ``mounts.json`` lists and is not mounted (after a restart)."""
    env = workspace_dir / ENV
    if not (env / _RECORD).is_file():
        return
    tree = workspace_dir / "tree"
    record = _read_record(env)
    if all(os.path.ismount(tree / name) for name in record):
        return
    with _lock, open(env / _RECORD, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # Daphne and the workers may all get here first
        for name, lower in _read_record(env).items():
            target = tree / name
            if os.path.ismount(target):
                continue
            try:
                # The work directory must be empty; the upper keeps what the agent wrote.
                work = env / "work" / name
                if work.exists():
                    _remove(work)
                work.mkdir(mode=0o700)
                _mount_one(Path(lower), env / "upper" / name, work, target)
            except OSError as exc:
                # A kept tree removed by hand, or a mount point the agent replaced while it was
                # not mounted (opened without following links: never mounted through one).
                log.warning("The prepared tree %s of %s was not mounted again: %s",
                            name, workspace_dir.name, exc)  # fmt: skip


def _read_record(env: Path) -> dict[str, str]:
    try:
        found = json.loads((env / _RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _write_record(env: Path, record: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=env, prefix=".mounts-")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, env / _RECORD)


def _refuse(why: str) -> None:
    if not _refused:
        _refused.append(why)
        log.warning("prepared trees are copied into workspaces with a quota: %s", why)


def _remove(path: Path) -> None:
    shutil.rmtree(path)  # the server's own directories (env/), not the agent's tree


def probe() -> str:
    """Try a small overlay for real (start-up, ``manage.py check``): why it failed, or ""."""
    if why := unavailable_reason():
        return why
    tmp = Path(tempfile.mkdtemp(prefix="tandem-overlay-probe-"))
    try:
        for name in ("lower", "upper", "work", "mnt"):
            (tmp / name).mkdir()
        _mount_one(tmp / "lower", tmp / "upper", tmp / "work", tmp / "mnt")
        _umount(tmp / "mnt")
        return ""
    except OSError as exc:
        why = f"overlay mounts are refused here ({exc.strerror})"
        if exc.errno in (errno.EPERM, errno.EACCES, errno.ENODEV, errno.EINVAL):
            _refuse(why)  # this process copies from now on, without trying each time
        return why
    finally:
        with contextlib.suppress(OSError):
            if os.path.ismount(tmp / "mnt"):
                _umount(tmp / "mnt")
        shutil.rmtree(tmp, ignore_errors=True)


def _umount(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(str(path).encode(), 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
