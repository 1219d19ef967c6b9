"""A control group of its own for each sandboxed call: memory, processes and CPU of the call as a
whole, not per process.

Rlimits are per process: six processes of 900 MB each stay under a 1 GB ``RLIMIT_AS``. A cgroup
bounds their sum. :func:`new_call_group` makes one per call under a Tandem parent; the sandbox
starts bwrap through a tiny ``/bin/sh`` wrapper that writes its own pid into the group's
``cgroup.procs`` and only then execs (so the command can't fork before it is inside); when the call
ends, everything still in the group is killed and the group removed.

Two kernel interfaces:

- **v2** (``/sys/fs/cgroup/cgroup.controllers`` exists; production hosts): the parent is
  ``SANDBOX_CGROUP_PARENT`` or ``/sys/fs/cgroup/tandem``; ``memory``, ``pids`` and ``cpu`` are
  enabled in its ``cgroup.subtree_control`` (and its parent's). A call's group gets
  ``memory.max``, ``memory.swap.max=0``, ``memory.oom.group=1`` (the kernel kills the whole call,
  not one process of it), ``pids.max`` and ``cpu.max``; ``cgroup.kill`` ends it. A server not
  running as root needs a delegated subtree (systemd ``Delegate=yes``) named by
  ``SANDBOX_CGROUP_PARENT``, with the controllers enabled.
- **v1** (separate ``memory``, ``pids`` and ``cpu`` hierarchies): the call gets a group in each,
  under ``tandem/`` inside the server's own group there (so it stays within whatever limits the
  server itself has); ``memory.limit_in_bytes`` (and ``memsw`` where swap is accounted),
  ``pids.max``, ``cpu.cfs_quota_us``. Everything in ``cgroup.procs`` is killed one by one.

Where neither can be used (not root and nothing delegated, a read-only ``/sys/fs/cgroup``),
:func:`status` says why, the start-up check warns once, and calls keep the per-process rlimits.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
_lock = threading.Lock()
_state: dict[str, Any] = {}  # "parents": list[Path] | None, "why": str, "version": int


@dataclass(frozen=True)
class Limits:
    memory_mb: int  # all processes of the call together (0: no limit)
    pids: int  # processes and threads of the call together (0: no limit)
    cpus: float  # CPU time per wall time, e.g. 1.0 = one core (0: no limit)


def _setting(name: str, default: str = "") -> str:
    try:
        from django.conf import settings

        return str(getattr(settings, name, default) or default)
    except Exception:  # outside Django (bench scripts): the environment
        return os.environ.get(name, default)


def status() -> tuple[int, str]:
    """(version, why): version 2 or 1 when per-call groups work, 0 with the reason when not."""
    _parents()
    return int(_state.get("version", 0)), str(_state.get("why", ""))


def _parents() -> list[Path] | None:
    """The parent directories (one on v2; memory, pids, cpu on v1), set up once per process."""
    if "parents" in _state:
        return _state["parents"]
    with _lock:
        if "parents" not in _state:
            try:
                version, parents = _set_up()
                _state.update(parents=parents, version=version, why="")
            except _Unavailable as exc:
                _state.update(parents=None, version=0, why=str(exc))
    return _state["parents"]


class _Unavailable(Exception):
    pass


def _set_up() -> tuple[int, list[Path]]:
    if _setting("SANDBOX_CGROUPS", "auto").lower() in ("off", "0", "false", "no"):
        raise _Unavailable("switched off (SANDBOX_CGROUPS=off)")
    if (ROOT / "cgroup.controllers").exists():
        return 2, [_set_up_v2()]
    if all((ROOT / c / "cgroup.procs").exists() for c in CONTROLLERS):
        return 1, _set_up_v1()
    raise _Unavailable(f"no cgroup v2 at {ROOT} and no v1 memory, pids and cpu hierarchies")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _set_up_v2() -> Path:
    configured = _setting("SANDBOX_CGROUP_PARENT")
    parent = Path(configured) if configured else ROOT / "tandem"
    if not parent.is_absolute():
        parent = ROOT / parent
    try:
        if not parent.exists():
            parent.mkdir()
        wanted = set(CONTROLLERS)
        # Enable the controllers on the way down: in the parent's parent (for the parent) and
        # in the parent (for the calls' groups).
        for level in (parent.parent, parent):
            enabled = set((level / "cgroup.subtree_control").read_text().split())
            missing = wanted - enabled
            if missing:
                _write(level / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
        _probe([parent])
    except OSError as exc:
        raise _Unavailable(
            f"cgroup v2 parent {parent} is not usable ({exc.strerror or exc}); run as root or "
            "set SANDBOX_CGROUP_PARENT to a delegated cgroup (systemd Delegate=yes) with the "
            "memory, pids and cpu controllers"
        ) from exc
    return parent


def _own_v1(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path.lstrip("/")
    return ""


def _set_up_v1() -> list[Path]:
    parents = []
    try:
        for controller in CONTROLLERS:
            parent = ROOT / controller / _own_v1(controller) / "tandem"
            parent.mkdir(exist_ok=True)
            parents.append(parent)
        _probe(parents)
    except OSError as exc:
        raise _Unavailable(
            f"cgroup v1 groups can't be made under {ROOT} ({exc.strerror or exc}); run as root"
        ) from exc
    return parents


def _probe(parents: list[Path]) -> None:
    group = CallGroup._make(parents, Limits(memory_mb=64, pids=8, cpus=1))
    group.remove()


def sweep() -> int:
    """Remove call groups left behind (a worker killed mid-call); how many went."""
    parents = _parents() or []
    removed = 0
    for parent in parents:
        for child in parent.glob("call-*"):
            owner = child.name.split("-")[1]
            if owner.isdigit() and Path(f"/proc/{owner}").exists():
                continue  # another live server process's call
            group = CallGroup(version=int(_state["version"]), dirs=[child])
            group.kill()
            if group.remove():
                removed += 1
    return removed


def new_call_group(limits: Limits) -> CallGroup | None:
    """A fresh group for one call, or None where cgroups can't be used (see :func:`status`)."""
    parents = _parents()
    if parents is None:
        return None
    return CallGroup._make(parents, limits)


@dataclass
class CallGroup:
    version: int
    dirs: list[Path]  # one on v2; one per controller on v1

    @classmethod
    def _make(cls, parents: list[Path], limits: Limits) -> CallGroup:
        name = f"call-{os.getpid()}-{secrets.token_hex(6)}"
        version = 2 if len(parents) == 1 else 1
        group = cls(version=version, dirs=[])
        try:
            for parent in parents:
                (parent / name).mkdir()
                group.dirs.append(parent / name)
            group._limit(limits)
        except BaseException:
            group.remove()
            raise
        return group

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def _limit(self, limits: Limits) -> None:
        mem = limits.memory_mb * 1024 * 1024
        quota = int(limits.cpus * CPU_PERIOD_US)
        if self.version == 2:
            d = self.dirs[0]
            if mem:
                _write(d / "memory.max", str(mem))
                with contextlib.suppress(FileNotFoundError):  # no swap accounting
                    _write(d / "memory.swap.max", "0")
                with contextlib.suppress(FileNotFoundError):  # kernels before 4.19
                    _write(d / "memory.oom.group", "1")
            if limits.pids:
                _write(d / "pids.max", str(limits.pids))
            if quota:
                _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        memory, pids, cpu = self.dirs
        if mem:
            _write(memory / "memory.limit_in_bytes", str(mem))
            with contextlib.suppress(FileNotFoundError):  # swap not accounted
                _write(memory / "memory.memsw.limit_in_bytes", str(mem))
        if limits.pids:
            _write(pids / "pids.max", str(limits.pids))
        if quota:
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(quota))

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this call for the memory limit."""
        try:
            if self.version == 2:
                text = (self.dirs[0] / "memory.events").read_text()
            else:
                text = (self.dirs[0] / "memory.oom_control").read_text()
        except OSError:
            return False
        fields = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        if int(fields.get("oom_kill", 0)) > 0:
            return True
        if self.version == 1 and "oom_kill" not in fields:  # old kernels: hits of the limit
            with contextlib.suppress(OSError, ValueError):
                return int((self.dirs[0] / "memory.failcnt").read_text()) > 0
        return False

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL everything in the group (processes that escaped bwrap's PID namespace too)."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                _write(self.dirs[0] / "cgroup.kill", "1")
                return
        for _ in range(20):  # v1: one by one; forks racing us are caught on the next pass
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def remove(self, wait: float = 0.0) -> bool:
        """rmdir the group (it must be empty); True when it is gone. Retries up to ``wait`` s."""
        deadline = time.monotonic() + wait
        left = []
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        left.append(d)
                        break
                    time.sleep(0.01)
        self.dirs = left
        return not left

    def close(self) -> None:
        """Kill what is left and remove the group; a group still busy is retried in the
        background (dying processes take a moment to leave it)."""
        self.kill()
        if not self.remove():
            threading.Thread(target=self._remove_later, daemon=True).start()

    def _remove_later(self) -> None:
        for _ in range(50):
            self.kill()
            if self.remove(wait=0.1):
                return
        log.warning("could not remove the sandbox's cgroup %s", self.dirs)


def log_status_once() -> None:
    """Say once, at start-up, whether calls are bounded as a whole."""
    if _state.get("logged"):
        return
    version, why = status()
    _state["logged"] = True
    if version:
        log.info("sandbox: each call gets a cgroup (v%s): memory, processes, CPU", version)
    else:
        (log.info if "switched off" in why else log.warning)(
            "sandbox: no cgroup per call (%s); only per-process limits (rlimits) apply, so "
            "several processes of one call can together use more memory than the limit",
            why,
        )
