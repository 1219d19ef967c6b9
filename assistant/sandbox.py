"""Run one command against a conversation's worktree inside bubblewrap, with hard limits.

Every tool that touches a repository goes through :func:`run`. What the command sees:

- the worktree, read-write, at ``/workspace`` (its working directory);
- ``/usr`` (and the ``/bin``, ``/lib``... symlinks into it) read-only, and a handful of files from
  ``/etc`` that programs need (loader cache, certificates, alternatives, time zone...); its
  ``/etc/passwd``, ``/etc/group`` and ``/etc/hosts`` are stubs written here;
- a private, size-capped tmpfs at ``/tmp`` (also ``HOME``), a fresh ``/proc`` showing only its own
  PID namespace, a minimal ``/dev``; the rest of the root is read-only;
- no network (a network namespace of its own with only loopback: the host's PostgreSQL and Redis
  on 127.0.0.1 are unreachable), no environment of the server (``--clearenv``, and bwrap itself
  starts with an empty environment because the sandbox can read ``/proc/1/environ``), no user
  namespaces of its own (``--disable-userns``).

Limits: wall time (we kill it), CPU seconds, address space, processes, file size (all rlimits set
by ``prlimit`` *inside* the sandbox, see :func:`_bwrap_args`), combined output size (read as a
stream, cut with a marker, killed when it goes on far past the cap) and the size of ``/tmp``.
And the call as a whole, where the host allows: a cgroup of its own per call (``cgroups``) bounds
the memory, processes and CPU of all its processes together; bwrap is started through a tiny
``/bin/sh`` wrapper that joins the group and then execs, so nothing of the call runs outside it,
and whatever is left in it is killed when the call ends. Disk and file count are bounded per
workspace by ``quota`` (a file system of its own), not here.

Processes: ``RLIMIT_NPROC`` is not enforced for (host) root, so the command must never run as
root. A server running as an ordinary user runs bwrap as itself (the recommended deployment:
nothing else to arrange). A server running as root starts bwrap as :data:`SANDBOX_UID`
(``nobody``; through Popen's ``user=`` on asyncio's loop, through ``setpriv`` on uvloop, which
lacks it) and grants that uid access to the worktree with POSIX ACLs, files staying the server's
(:func:`_grant_worktree`); every directory above a worktree must then be searchable (o+x) by
that uid. Because each sandbox has a user namespace of its own, the process count is per
sandbox, not one budget shared by every sandbox of the uid.

Stop: cancelling the awaiting task SIGKILLs bwrap; ``--die-with-parent`` then kills the sandbox's
PID 1 and with it the whole PID namespace. If the sandbox cannot start, :class:`SandboxError` is
raised; nothing here ever runs a command without it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import json
import os
import shutil
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from assistant import cgroups

BWRAP = "/usr/bin/bwrap"
PRLIMIT = "/usr/bin/prlimit"  # util-linux; sets the rlimits inside the sandbox, then execs
SETPRIV = "/usr/bin/setpriv"  # util-linux; drops root for bwrap where the loop can't (uvloop)
SH = "/bin/sh"
# Joins the call's cgroup(s), then execs: nothing of the call runs outside it, not even bwrap.
_JOIN = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ >"$1" || exit 125; shift; n=$((n-1)); done; '
    'exec "$@"'
)
WORKDIR = "/workspace"
SANDBOX_UID = 65534  # only when the server runs as root: the uid the command runs as
SANDBOX_GID = 65534

# The sandbox's /etc: copies of what dynamic linking, TLS, locales and the usual tools need from
# the host's, nothing with secrets or the server's configuration (no shadow, ssh, postgresql...),
# plus stub passwd/group/hosts. Copied once per process into one directory bound read-only: one
# mount instead of ~25 bind mounts saved ~7 ms per call.
_ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",  # /usr/bin/awk, editor... are symlinks through here
    "ssl/certs",
    "ssl/openssl.cnf",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "mime.types",
    "magic",
    "magic.mime",
    "inputrc",
    "os-release",
    "debian_version",
    "python3",
    "python3.*",  # Debian's sitecustomize (a glob: the image's Python may be another version)
)
_ETC_WATCH = ("ld.so.cache", "alternatives", "ssl/certs")  # change when packages are installed
# (uid, gid, system root) -> (stamp, dir); the root is "/" or a sandbox image's (``images``)
_etc_snapshots: dict[tuple[int, int, Path], tuple[tuple[object, ...], Path]] = {}
_setup_lock = threading.Lock()  # one /etc copy or worktree grant at a time in this process
_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
# POSIX ACLs as extended attributes (root mode, see _grant_worktree).
_ACL_ACCESS = "system.posix_acl_access"
_ACL_DEFAULT = "system.posix_acl_default"
# The one walk of a workspace the server does with its own rights (the root-mode grant) stops
# past these: a tree of a million empty files must not hold a worker for minutes.
GRANT_MAX_ENTRIES = 500_000
GRANT_MAX_SECONDS = 120.0


_Number = TypeVar("_Number", int, float)


def _setting(name: str, default: _Number) -> _Number:
    """A number from Django's settings (0 means no limit), or ``default`` outside Django."""
    try:
        from django.conf import settings

        return type(default)(getattr(settings, name, default))
    except Exception:  # no settings configured (scripts)
        return default


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 30
    cpu_seconds: int = 20  # per process (RLIMIT_CPU); the wall limit bounds a tree of them
    memory_mb: int = 1024  # address space per process (RLIMIT_AS)
    max_processes: int = 128  # tasks (processes and threads) in this sandbox (RLIMIT_NPROC)
    max_output_bytes: int = 1_000_000  # stdout + stderr kept; killed past 4x this
    max_file_mb: int = 100  # largest file it may write (RLIMIT_FSIZE)
    tmp_mb: int = 256  # size of the private /tmp (tmpfs, i.e. memory)
    # The call as a whole, in a cgroup of its own where the host allows (see ``cgroups``);
    # defaults from SANDBOX_MEMORY_MB, SANDBOX_PIDS, SANDBOX_CPUS:
    total_memory_mb: int = field(default_factory=lambda: _setting("SANDBOX_MEMORY_MB", 2048))
    total_processes: int = field(default_factory=lambda: _setting("SANDBOX_PIDS", 256))
    cpus: float = field(default_factory=lambda: _setting("SANDBOX_CPUS", 1.0))


@dataclass
class SandboxResult:
    exit_code: int | None  # None when we killed it; 128+N when a signal N ended it
    stdout: str
    stderr: str
    truncated: bool = False
    timed_out: bool = False
    killed_reason: str = ""  # "", "timeout", "output", "cancelled", "cpu", "file_size", "memory"
    duration_ms: int = 0
    stdout_bytes: bytes = b""  # stdout as it came (up to the cap), for callers that want bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.killed_reason


class SandboxError(Exception):
    """The sandbox could not be set up; the command did not run."""


async def run(
    argv: Sequence[str],
    *,
    worktree: Path,
    limits: SandboxLimits | None = None,
    stdin: bytes | None = None,
    network: bool = False,
    git_dir: Path | None = None,
    git_dir_writable: bool = False,
    image: str | None = None,
    ro_binds: Mapping[str, Path] | None = None,
    env: dict[str, str] | None = None,
    egress: Path | None = None,
    on_output: Callable[[bytes], None] | None = None,
    rw_binds: Sequence[tuple[Path, str]] = (),
) -> SandboxResult:
    """Run ``argv`` in ``worktree`` under bubblewrap and return what it did.

    ``env``: variables set for the command on top of the sandbox's own. ``egress``: a call's
    channel directory (``egress.channel``), bound at ``/run/tandem-egress``: the only way out
    of the sandbox's network namespace, to the registry-only proxy. ``on_output``: called with
    each chunk (bytes) of stdout or stderr as it comes (setup streams its output live).
    ``rw_binds``: (host directory, path inside) mounted read-write, for the server's own work
    (keeping a prepared tree, ``environment``), never for the agent's commands.

    ``ro_binds``: host files or directories mounted read-only at the given places under
    ``/opt/`` (a tool plugin's own static binary, say); nothing else of the host is added.

    ``image``: the sandbox image whose ``/usr`` and ``/etc`` the command sees (``images``);
    None or ``host``: the server's own. An image not built here is a :class:`SandboxError`
    (never the host's system instead).

    ``git_dir``: the workspace's git directory (kept outside the tree, see ``repos``), mounted
    read-only at ``/workspace/.git`` so git commands work inside but only the server writes it.
    ``git_dir_writable``: mounted read-write instead, for the server's own git on the workspace
    (``sandbox_git``), never for the agent's commands.

    ``network=True`` shares the host's network namespace — including its loopback, where the
    database listens — so it is for deliberate, approved cases only.
    """
    limits = limits or SandboxLimits()
    prepared = await _prepare(
        argv,
        worktree=worktree,
        limits=limits,
        network=network,
        git_dir=git_dir,
        git_dir_writable=git_dir_writable,
        image=image,
        ro_binds=ro_binds,
        env=env,
        egress=egress,
        rw_binds=rw_binds,
    )
    try:
        return await _run_in(prepared.group, prepared.argv, limits, stdin, prepared, on_output)
    finally:
        if prepared.group is not None:
            prepared.group.close()  # kills whatever is left in it


@dataclass
class _Prepared:
    """Everything checked and built for one sandboxed process, before it starts."""

    argv: list[str]
    args: list[str]  # bwrap's
    group: cgroups.CallGroup | None
    as_root: bool
    uid: int
    gid: int


async def _prepare(
    argv: Sequence[str],
    *,
    worktree: Path,
    limits: SandboxLimits,
    network: bool = False,
    git_dir: Path | None = None,
    git_dir_writable: bool = False,
    image: str | None = None,
    ro_binds: Mapping[str, Path] | None = None,
    env: dict[str, str] | None = None,
    egress: Path | None = None,
    rw_binds: Sequence[tuple[Path, str]] = (),
) -> _Prepared:
    argv = list(argv)
    if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise ValueError("argv must be a non-empty list of strings without NUL bytes")
    worktree = _check_worktree(worktree)
    binds = _check_ro_binds(ro_binds or {})
    if git_dir is not None:
        git_dir = _check_git_dir(git_dir, worktree)
    system = _system_root(image)
    as_root = os.geteuid() == 0
    _check_binaries(as_root)
    uid, gid = (SANDBOX_UID, SANDBOX_GID) if as_root else (os.getuid(), os.getgid())
    if as_root and not _has_grant(worktree, uid):
        await asyncio.to_thread(_grant_worktree, worktree, uid)  # a walk of the whole tree, once
    if as_root and git_dir is not None and git_dir_writable and not _has_grant(git_dir, uid):
        await asyncio.to_thread(_grant_worktree, git_dir, uid)

    etc = _etc_snapshot(uid, gid, system)
    if etc is None:
        etc = await asyncio.to_thread(_make_etc_snapshot, uid, gid, system)
    args = _bwrap_args(
        worktree=worktree,
        git_dir=git_dir,
        git_dir_writable=git_dir_writable,
        etc=etc,
        system=system,
        limits=limits,
        network=network,
        uid=uid,
        gid=gid,
        ro_binds=binds,
        extra_env=env,
        egress=egress,
        rw_binds=rw_binds,
    )
    try:
        group = cgroups.new_call_group(
            cgroups.Limits(limits.total_memory_mb, limits.total_processes, limits.cpus)
        )
    except OSError as exc:  # cgroups worked at start-up: never go on without one now
        raise SandboxError(f"the sandbox's cgroup could not be made: {exc}") from exc
    return _Prepared(argv, args, group, as_root, uid, gid)


async def _spawn(
    prepared: _Prepared,
    limits: SandboxLimits,
    *,
    stdin: int,
) -> tuple[asyncio.subprocess.Process, int]:
    """Start bwrap for ``prepared``; returns the process and the read end of its status pipe."""
    group, as_root, uid, gid = prepared.group, prepared.as_root, prepared.uid, prepared.gid
    # The arguments go through a pipe (--args) so /proc/1/cmdline inside shows no host paths.
    to_close: list[int] = []
    try:
        args_fd = _pipe_with(b"".join(a.encode() + b"\0" for a in prepared.args), to_close)
        status_r, status_w = os.pipe()
        to_close.append(status_w)
        pass_fds = [args_fd, status_w]
        prefix, ident = _drop_root(uid, gid, setpriv=group is not None) if as_root else ([], {})
        if group is not None:  # the wrapper joins the group as the server's user, then execs
            files = group.procs_files
            prefix = [SH, "-c", _JOIN, "sh", str(len(files)), *files, *prefix]
        try:
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                BWRAP,
                "--args",
                str(args_fd),
                "--json-status-fd",
                str(status_w),
                "--",
                PRLIMIT,
                *_prlimits(limits),
                "--",
                *prepared.argv,
                stdin=stdin,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": _PATH, "LANG": "C.UTF-8"},  # the sandbox can read bwrap's environ
                pass_fds=pass_fds,
                start_new_session=True,  # signals aimed at the server's group don't reach it
                **ident,
            )
        except BaseException as exc:
            os.close(status_r)
            if isinstance(exc, OSError):
                raise SandboxError(f"the sandbox could not start: {exc}") from exc
            raise
    finally:
        for fd in to_close:
            os.close(fd)
    return proc, status_r


async def _run_in(
    group: cgroups.CallGroup | None,
    argv: list[str],
    limits: SandboxLimits,
    stdin: bytes | None,
    prepared: _Prepared,
    on_output: Callable[[bytes], None] | None = None,
) -> SandboxResult:
    as_root, uid = prepared.as_root, prepared.uid
    started = time.monotonic()
    proc, status_r = await _spawn(
        prepared,
        limits,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
    )

    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except ProcessLookupError:  # already gone (and reaped): nothing to kill
        pidfd = None
    watch = _Watch(proc, limits.max_output_bytes, pidfd, on_output)
    # v1 has no memory.oom.group: end the whole call at its first out-of-memory kill, as v2 does.
    oom_watch = (
        asyncio.ensure_future(_end_on_oom(group, watch))
        if group is not None and group.version == 1 and limits.total_memory_mb
        else None
    )
    try:
        body = asyncio.ensure_future(watch.communicate(stdin))
        try:
            await asyncio.wait_for(asyncio.shield(body), timeout=limits.wall_seconds)
        except TimeoutError:
            watch.kill("timeout")
            await _settle(body)
        except asyncio.CancelledError:
            watch.kill("cancelled")
            await _settle(body)
            raise
    finally:
        if oom_watch is not None:
            oom_watch.cancel()
        status = _read_status(status_r)
        if pidfd is not None:
            os.close(pidfd)
    duration_ms = int((time.monotonic() - started) * 1000)

    stderr = watch.text("stderr")
    exit_code = status.get("exit-code")
    oom = group is not None and group.oom_killed()
    if exit_code is None and not watch.killed_reason and not oom:
        # bwrap reports an exit code only once the command started: this is a setup failure.
        detail = stderr.strip() or f"bwrap exited with {proc.returncode}"
        if as_root and "Permission denied" in detail:
            detail += (
                f" (bwrap runs as uid {uid} here: every directory above the worktree must be "
                "searchable by it, e.g. mode 0711)"
            )
        raise SandboxError(f"the sandbox could not start: {detail}")
    reason = watch.killed_reason
    if reason in ("", "timeout") and oom:
        reason = "memory"  # (a call stuck after the kernel killed part of it also counts)
    elif not reason and exit_code == 128 + signal.SIGXCPU:
        reason = "cpu"
    elif not reason and exit_code == 128 + signal.SIGXFSZ:
        reason = "file_size"
    return SandboxResult(
        exit_code=exit_code,
        stdout=watch.text("stdout"),
        stderr=stderr,
        truncated=watch.truncated,
        timed_out=watch.killed_reason == "timeout",
        killed_reason=reason,
        duration_ms=duration_ms,
        stdout_bytes=bytes(watch.kept["stdout"]),
    )


def run_sync(argv: Sequence[str], **kwargs: Any) -> SandboxResult:
    """:func:`run` for code without an event loop (tests, scripts)."""
    return asyncio.run(run(argv, **kwargs))


class SandboxProcess:
    """A long-lived sandboxed process with pipes (an MCP server over stdio, say), from
    :func:`start`. Its owner talks to it through ``stdin``/``stdout`` and must :meth:`close` it;
    stderr is read all along and its last few KB kept (for errors in words)."""

    STDERR_KEPT = 8192

    def __init__(self, proc: asyncio.subprocess.Process, prepared: _Prepared, status_r: int):
        self.proc = proc
        self._group = prepared.group
        self._status_r: int | None = status_r
        self._stderr = bytearray()
        try:
            self._pidfd: int | None = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            self._pidfd = None
        self._stderr_task = asyncio.ensure_future(self._read_stderr())
        self.exit_status: dict[str, Any] = {}

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self.proc.stdin is not None
        return self.proc.stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def stderr_tail(self, chars: int = 2000) -> str:
        return self._stderr.decode("utf-8", errors="replace").strip()[-chars:]

    def exit_code(self) -> int | None:
        """The command's exit code once it ended (None: still running, or it never started)."""
        return self.exit_status.get("exit-code")

    def memory_killed(self) -> bool:
        return self._group is not None and self._group.oom_killed()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self._stderr += chunk
            del self._stderr[: -self.STDERR_KEPT]

    async def wait(self) -> int:
        code = await self.proc.wait()
        self._collect_status()
        return code

    def _collect_status(self) -> None:
        if self._status_r is not None:
            fd, self._status_r = self._status_r, None
            self.exit_status = _read_status(fd)

    def kill(self) -> None:
        """SIGKILL bwrap; --die-with-parent takes the whole PID namespace with it."""
        if self._pidfd is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def close(self, grace: float = 2.0) -> None:
        """Close its stdin (an MCP server's cue to exit), wait ``grace`` seconds, then kill it;
        its cgroup goes with whatever is left. Safe to call twice."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout=grace)
        except (TimeoutError, asyncio.CancelledError):
            self.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout=5)
        finally:
            self._stderr_task.cancel()
            self._collect_status()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            if self._group is not None:
                self._group.close()
                self._group = None


async def start(
    argv: Sequence[str],
    *,
    worktree: Path,
    limits: SandboxLimits | None = None,
    git_dir: Path | None = None,
    image: str | None = None,
    ro_binds: Mapping[str, Path] | None = None,
) -> SandboxProcess:
    """Start ``argv`` in the sandbox as :func:`run` would (same mounts, no network, rlimits and
    a cgroup of its own) and return at once with its pipes: for a process that lives across
    many exchanges. No wall-time limit here: the owner decides when it ends (``close``).
    ``ro_binds``: as for :func:`run` (operator-chosen folders under /opt/, read-only)."""
    limits = limits or SandboxLimits()
    prepared = await _prepare(
        argv, worktree=worktree, limits=limits, git_dir=git_dir, image=image, ro_binds=ro_binds
    )
    try:
        proc, status_r = await _spawn(prepared, limits, stdin=asyncio.subprocess.PIPE)
    except BaseException:
        if prepared.group is not None:
            prepared.group.close()
        raise
    return SandboxProcess(proc, prepared, status_r)


# --- Building the command line ------------------------------------------------------------------


def _bwrap_args(
    *,
    worktree: Path,
    git_dir: Path | None = None,
    git_dir_writable: bool = False,
    etc: Path,
    limits: SandboxLimits,
    network: bool,
    uid: int,
    gid: int,
    system: Path = Path("/"),
    ro_binds: Sequence[tuple[str, Path]] = (),
    extra_env: dict[str, str] | None = None,
    egress: Path | None = None,
    rw_binds: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    args = [
        "--unshare-all",  # user, mount, pid, ipc, uts, cgroup and net namespaces
        "--unshare-user",  # explicit: --disable-userns requires it
        "--disable-userns",  # no nested user namespaces (kernel attack surface)
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into a terminal of ours
        "--hostname",
        "sandbox",
        "--clearenv",
    ]
    if network:
        args.append("--share-net")
    env = {
        "PATH": _PATH,
        "HOME": "/tmp",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
        # Bytecode caches in the tree would show up as changes in every turn's diff.
        "PYTHONDONTWRITEBYTECODE": "1",
        **(extra_env or {}),
    }
    for key, value in env.items():
        args += ["--setenv", key, value]
    # The system: the host's /usr, or a sandbox image's (never both).
    args += ["--ro-bind", str(system / "usr"), "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        link = system / name
        if link.is_symlink():  # merged /usr (Debian 12): /bin -> usr/bin
            args += ["--symlink", os.readlink(link), f"/{name}"]
        elif link.is_dir():
            args += ["--ro-bind", str(link), f"/{name}"]
    args += ["--ro-bind", str(etc), "/etc"]
    if network:
        args += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]  # over the empty stub
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(64 * 1024 * 1024),
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
        "--size",
        str(limits.tmp_mb * 1024 * 1024),
        "--tmpfs",
        "/tmp",
        "--bind",
        str(worktree),
        WORKDIR,
    ]
    for target, source in ro_binds:  # before the root turns read-only: bwrap makes the dirs
        args += ["--ro-bind", str(source), target]
    if egress is not None:  # the call's own channel to the egress proxy, nothing else
        args += ["--ro-bind", str(egress), "/run/tandem-egress"]
    for source, target in rw_binds:  # the server's own work (a prepared tree), never the agent's
        args += ["--bind", str(source), target]
    args += ["--remount-ro", "/"]
    if git_dir is not None:  # over the tree's .git (bwrap makes the directory if missing)
        args += ["--bind" if git_dir_writable else "--ro-bind", str(git_dir), f"{WORKDIR}/.git"]
    return [*args, "--chdir", WORKDIR]


def _check_ro_binds(binds: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """Extra read-only mounts: existing host paths, each onto a fresh place under /opt/ (never
    over the system, the workspace or /tmp)."""
    checked = []
    for target, source in binds.items():
        norm = os.path.normpath(target)
        if not norm.startswith("/opt/") or norm != target or "\0" in target:
            raise ValueError(f"a read-only bind must go to a normalised path under /opt/: {target}")
        if not Path(source).exists():
            raise SandboxError(f"{source} is missing, so it could not be mounted at {target}")
        checked.append((target, Path(source).resolve()))
    return checked


def _prlimits(limits: SandboxLimits) -> list[str]:
    # Set inside the sandbox, after bwrap made its user namespace: the kernel counts
    # RLIMIT_NPROC per (user namespace, uid) and caps the namespace's total by its creator's
    # limit, so setting it on bwrap itself would make every sandbox of the uid share one budget.
    mem = limits.memory_mb * 1024 * 1024
    fsize = limits.max_file_mb * 1024 * 1024
    cpu = limits.cpu_seconds
    return [
        f"--nproc={limits.max_processes}",
        f"--as={mem}",
        f"--cpu={cpu}:{cpu + 1}",  # SIGXCPU at the soft limit, SIGKILL a second later
        f"--fsize={fsize}",
        "--core=0",
    ]


def _drop_root(uid: int, gid: int, *, setpriv: bool = False) -> tuple[list[str], dict[str, Any]]:
    """How bwrap gets started as ``uid`` when the server is root: a command prefix, or kwargs.
    ``setpriv``: always the prefix (something runs as root before it: the cgroup wrapper)."""
    if not setpriv and type(asyncio.get_running_loop()).__module__.startswith("asyncio"):
        # Popen switches uid in the forked child before exec: no extra program.
        return [], {"user": uid, "group": gid, "extra_groups": []}
    # uvloop (Daphne runs on it) refuses user/group: setpriv switches, then execs bwrap.
    return [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"], {}


def _system_root(image: str | None) -> Path:
    """Where the command's /usr and /etc come from: "/" (the host's) or the image's root."""
    if image is None or image == "host":
        return Path("/")
    from assistant import images

    try:
        root = images.root_of(image)
    except images.ImageError as exc:
        raise SandboxError(str(exc)) from exc
    return root or Path("/")


def _etc_snapshot(uid: int, gid: int, system: Path = Path("/")) -> Path | None:
    """The current copy of /etc for this uid, or None when there is none (or it is stale)."""
    stamp, snap = _etc_snapshots.get((uid, gid, system), (None, None))
    return snap if stamp == _etc_stamp(system) else None


def _etc_stamp(system: Path = Path("/")) -> tuple[object, ...]:
    stamp: list[object] = []
    for name in _ETC_WATCH:
        try:
            st = os.stat(system / "etc" / name)
            stamp.append((st.st_mtime_ns, st.st_ino))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


def _make_etc_snapshot(uid: int, gid: int, system: Path = Path("/")) -> Path:
    with _setup_lock:
        if snap := _etc_snapshot(uid, gid, system):
            return snap
        stamp = _etc_stamp(system)
        snap = Path(tempfile.mkdtemp(prefix="tandem-sandbox-etc-"))
        atexit.register(_remove_snapshot, snap, os.getpid())
        etc = system / "etc"
        for pattern in _ETC:
            for src in sorted(etc.glob(pattern)) if "*" in pattern else [etc / pattern]:
                dst = snap / src.relative_to(etc)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_symlink():  # localtime, os-release: resolved inside against its /usr
                    dst.symlink_to(os.readlink(src))
                elif src.is_dir():
                    shutil.copytree(src, dst, symlinks=True)
                elif src.is_file():
                    shutil.copyfile(src, dst)
        stubs = {
            "passwd": _passwd(uid, gid),
            "group": _group(gid),
            "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost\n",
            "hostname": "sandbox\n",
            "resolv.conf": "",  # no network; with network=True the host's is bound over it
        }
        for name, text in stubs.items():
            (snap / name).write_text(text)
        for top, dirs, files in os.walk(snap):  # readable by the sandbox uid, writable by none
            for d in dirs:
                os.chmod(os.path.join(top, d), 0o755)  # noqa: S103 - public data, read-only
            for f in files:
                if not os.path.islink(path := os.path.join(top, f)):
                    os.chmod(path, 0o644)
        snap.chmod(0o755)
        _etc_snapshots[(uid, gid, system)] = (stamp, snap)
        return snap


def _remove_snapshot(snap: Path, owner: int) -> None:
    if os.getpid() == owner:  # not from a forked child that inherited the handler
        shutil.rmtree(snap, ignore_errors=True)


def _passwd(uid: int, gid: int) -> str:
    lines = ["root:x:0:0:root:/root:/usr/sbin/nologin", f"sandbox:x:{uid}:{gid}::/tmp:/bin/sh"]
    if uid != 65534:
        lines.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    return "\n".join(lines) + "\n"


def _group(gid: int) -> str:
    lines = ["root:x:0:", f"sandbox:x:{gid}:"]
    if gid != 65534:
        lines.append("nogroup:x:65534:")
    return "\n".join(lines) + "\n"


def _pipe_with(data: bytes, to_close: list[int]) -> int:
    """A pipe holding ``data`` and closed for writing; returns the read end."""
    r, w = os.pipe()
    to_close.append(r)
    try:
        if len(data) > 60_000:  # a pipe buffer is 64 KiB; ours are a few hundred bytes
            raise SandboxError("sandbox arguments too long")
        os.write(w, data)
    finally:
        os.close(w)
    return r


# --- Checks before starting ---------------------------------------------------------------------


def _check_binaries(as_root: bool) -> None:
    needed = [(BWRAP, "bubblewrap (bwrap)"), (PRLIMIT, "prlimit (util-linux)")]
    if as_root:
        needed.append((SETPRIV, "setpriv (util-linux)"))
    for path, what in needed:
        if not os.access(path, os.X_OK):
            raise SandboxError(
                f"the sandbox is unavailable: {what} is not installed at {path}; "
                "commands are never run without it"
            )


def _check_worktree(worktree: Path) -> Path:
    try:
        resolved = Path(worktree).resolve(strict=True)
    except OSError as exc:
        raise SandboxError(f"the worktree {worktree} does not exist ({exc.strerror})") from exc
    if not resolved.is_dir():
        raise SandboxError(f"the worktree {worktree} is not a directory")
    return resolved


def _check_git_dir(git_dir: Path, worktree: Path) -> Path:
    try:
        resolved = Path(git_dir).resolve(strict=True)
    except OSError as exc:
        raise SandboxError(f"the git directory {git_dir} does not exist ({exc.strerror})") from exc
    planted = worktree / ".git"
    if os.path.lexists(planted) and (planted.is_symlink() or not planted.is_dir()):
        # A .git file or link the agent made: bwrap could not mount over it.
        raise SandboxError("the worktree has a .git file or link of its own; remove it first")
    return resolved


# --- Root: give the sandbox uid access to the worktree ------------------------------------------


def _acl(entries: list[tuple[int, int, int]]) -> bytes:
    # Linux's xattr form of a POSIX ACL: version 2, then (tag, perm, id) entries sorted by tag.
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _acl_for(mode: int, uid: int) -> bytes:
    user_obj, group_obj, other = (mode >> 6) & 7, (mode >> 3) & 7, mode & 7
    # The sandbox uid gets what the owner has; the mask lets exactly that through (it shows as
    # the group bits, which git ignores).
    named = user_obj
    nobody = 0xFFFFFFFF
    return _acl(
        [
            (0x01, user_obj, nobody),  # ACL_USER_OBJ
            (0x02, named, uid),  # ACL_USER
            (0x04, group_obj, nobody),  # ACL_GROUP_OBJ
            (0x10, named | group_obj, nobody),  # ACL_MASK
            (0x20, other, nobody),  # ACL_OTHER
        ]
    )


def _has_grant(path: Path, uid: int) -> bool:
    try:
        data = os.getxattr(path, _ACL_DEFAULT, follow_symlinks=False)
    except OSError:
        return False
    return any(
        struct.unpack_from("<HHI", data, off)[::2] == (0x02, uid) for off in range(4, len(data), 8)
    )


def _grant_worktree(worktree: Path, uid: int) -> None:
    """Let ``uid`` read and write the worktree while every file stays the server's (root's).

    An ACL entry on every file and directory, and a default ACL on directories so that files the
    server creates later (git checkout, say) inherit it. Done once per worktree: the top
    directory's default ACL, set last, is the marker (only its owner can change it, so the
    sandbox can't remove it). The tree is hostile: everything goes through file descriptors
    opened without following symlinks (os.fwalk, O_NOFOLLOW), so a directory swapped for a
    link to /etc halfway through can't make us touch anything outside.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        with _setup_lock:  # one walk at a time in this process; the marker makes repeats no-ops
            if _has_grant(worktree, uid):
                return
            root = os.stat(worktree, follow_symlinks=False)
            seen, deadline = 0, time.monotonic() + GRANT_MAX_SECONDS
            for _top, dirs, files, dirfd in os.fwalk(worktree, follow_symlinks=False):
                seen += 1 + len(dirs) + len(files)
                if seen > GRANT_MAX_ENTRIES or time.monotonic() > deadline:
                    raise SandboxError(
                        f"the worktree is too large to prepare for the sandbox (more than "
                        f"{GRANT_MAX_ENTRIES} files, or {GRANT_MAX_SECONDS:g} s); "
                        "remove some files"
                    )
                st = os.fstat(dirfd)
                os.setxattr(dirfd, _ACL_ACCESS, _acl_for(st.st_mode, uid))
                if not os.path.samestat(st, root):  # the top directory's comes last
                    os.setxattr(dirfd, _ACL_DEFAULT, _acl_for(0o40755, uid))
                for name in files:
                    try:
                        fd = os.open(name, flags, dir_fd=dirfd)
                    except OSError as exc:
                        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a socket
                            continue
                        raise
                    try:
                        st = os.fstat(fd)
                        if (st.st_mode & 0o170000) == 0o100000:  # regular files only
                            os.setxattr(fd, _ACL_ACCESS, _acl_for(st.st_mode, uid))
                    finally:
                        os.close(fd)
            top = os.open(worktree, flags | os.O_DIRECTORY)
            try:
                os.setxattr(top, _ACL_DEFAULT, _acl_for(0o40755, uid))  # the marker, last
            finally:
                os.close(top)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise SandboxError(
                f"the worktree's file system does not support ACLs; cannot let the sandbox user "
                f"(uid {uid}) write {worktree}. Run the server as an ordinary user instead of root."
            ) from exc
        raise SandboxError(f"could not prepare the worktree for the sandbox: {exc}") from exc


# --- While it runs ------------------------------------------------------------------------------


@dataclass
class _Watch:
    """Reads stdout and stderr as they come, keeps at most ``cap`` bytes of the two together."""

    proc: asyncio.subprocess.Process
    cap: int
    pidfd: int | None
    on_output: Callable[[bytes], None] | None = None
    kept: dict[str, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()}
    )
    dropped: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    killed_reason: str = ""

    @property
    def truncated(self) -> bool:
        return any(self.dropped.values())

    def kill(self, reason: str) -> None:
        """SIGKILL bwrap, once; --die-with-parent takes the whole PID namespace with it."""
        if self.killed_reason:
            return
        self.killed_reason = reason
        # Through a pidfd, not Process.kill(): Popen.send_signal polls first and could reap the
        # child behind asyncio's watcher; a pidfd also can't hit a recycled pid.
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    async def communicate(self, stdin: bytes | None) -> None:
        await asyncio.gather(
            self._feed(stdin),
            self._pump(self.proc.stdout, "stdout"),
            self._pump(self.proc.stderr, "stderr"),
        )
        await self.proc.wait()

    async def _feed(self, data: bytes | None) -> None:
        if data is None or self.proc.stdin is None:
            return
        # uvloop raises RuntimeError ("the handler is closed") where asyncio raises
        # BrokenPipeError: the command exited (or never started) before reading its input.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        self.proc.stdin.close()

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            if self.on_output is not None:
                self.on_output(chunk)
            room = self.cap - sum(len(b) for b in self.kept.values())
            if room > 0:
                self.kept[name] += chunk[:room]
            self.dropped[name] += max(0, len(chunk) - max(room, 0))
            # Past the cap we only count; far past it, stop the command: 100 MB of `yes`
            # must cost neither memory here nor minutes of wall time.
            if sum(self.dropped.values()) > 3 * self.cap:
                self.kill("output")

    def text(self, name: str) -> str:
        out = self.kept[name].decode("utf-8", errors="replace")
        if self.dropped[name]:
            stopped = " (the command was stopped)" if self.killed_reason == "output" else ""
            out += (
                f"\n[output truncated by the sandbox: {self.dropped[name]} more bytes of "
                f"{name} not shown; at most {self.cap} bytes are kept{stopped}]\n"
            )
        return out


async def _end_on_oom(group: cgroups.CallGroup, watch: _Watch) -> None:
    """Poll the call's v1 memory group; at its first OOM kill, stop the call as a whole."""
    while not group.oom_killed():  # a small sysfs read
        await asyncio.sleep(0.1)
    watch.kill("memory")  # bwrap, and with it the PID namespace; the group is emptied at the end


async def _settle(body: asyncio.Future[Any]) -> None:
    """Wait (at most 5 s) for the killed process to be reaped and its pipes to close."""
    # A CancelledError here propagates: the SIGKILL has been sent, reaping goes on without us.
    with contextlib.suppress(Exception):  # timeout or a read error: moot once it is killed
        await asyncio.shield(asyncio.wait_for(body, timeout=5))


def _read_status(fd: int) -> dict[str, Any]:
    """bwrap's --json-status-fd: one JSON object per line (child-pid, then exit-code)."""
    status: dict[str, Any] = {}
    os.set_blocking(fd, False)
    buf = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(fd)
    for line in buf.splitlines():
        with contextlib.suppress(ValueError):
            status.update(json.loads(line))
    return status
