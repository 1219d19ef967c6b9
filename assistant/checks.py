"""What the kernel enforces here, said once at start-up and by ``manage.py check``.

Per-call cgroups (memory, processes, CPU of a tool call as a whole) and per-workspace file
systems (bytes and files) need root or delegation; where the host refuses them, Tandem falls back
to per-process rlimits and the server's own disk, and says so here rather than silently.
"""

from __future__ import annotations

import logging

from django.core import checks

log = logging.getLogger("assistant.sandbox")
_announced = False


def _cgroup_problem() -> str:
    from . import cgroups

    version, why = cgroups.status()
    return "" if version else why


def _quota_problem() -> str:
    from . import quota

    return quota.unavailable_reason()


def _overlay_problem() -> str:
    from . import overlays

    return overlays.probe()  # a real try (a few ms): a refusal is remembered, copies follow


def _overlay_refusal_logged(why: str) -> bool:
    from . import overlays

    return why in overlays._refused  # overlays logs a refusal once, when it finds it


def announce_limits() -> None:
    """Log once per process what is not enforced by the kernel (and clear stale cgroups)."""
    global _announced
    if _announced:
        return
    _announced = True
    try:
        from . import cgroups

        cgroups.log_status_once()
        if not _cgroup_problem():
            cgroups.sweep()
        if why := _quota_problem():
            (log.info if "switched off" in why else log.warning)(
                "sandbox: no disk quota per workspace (%s); a command can fill the server's "
                "disk up to its free space (only the per-file size limit applies)",
                why,
            )
        elif (why := _overlay_problem()) and not _overlay_refusal_logged(why):
            log.warning(
                "sandbox: prepared trees are copied into workspaces with a quota (%s): a new "
                "conversation's start costs a copy of its .venv/node_modules",
                why,
            )
    except Exception:  # never keep the server from starting over a probe
        log.exception("sandbox: checking cgroups and quotas failed")


@checks.register()
def sandbox_limits(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    found: list[checks.CheckMessage] = []
    if why := _cgroup_problem():
        found.append(
            checks.Warning(
                f"Sandboxed commands get no cgroup of their own: {why}.",
                hint="Only per-process limits apply; several processes of one command can "
                "together exceed SANDBOX_MEMORY_MB and SANDBOX_PIDS. Run as root or delegate a "
                "cgroup v2 subtree (SANDBOX_CGROUP_PARENT).",
                id="tandem.W001",
            )
        )
    from . import quota

    if why := quota.probe():  # a real try: containers refuse loop mounts even to root
        found.append(
            checks.Warning(
                f"Workspaces get no disk quota: {why}.",
                hint="A command can fill the server's disk. Workspaces on their own loop-mounted "
                "file system need root and loop devices (WORKSPACE_QUOTA_MB, "
                "WORKSPACE_QUOTA_FILES).",
                id="tandem.W002",
            )
        )
    else:
        from . import overlays

        if why := overlays.probe():  # only matters where workspaces are file systems of their own
            found.append(
                checks.Warning(
                    f"Prepared trees are copied into workspaces with a quota: {why}.",
                    hint="A new conversation then starts with a copy of its .venv/node_modules "
                    "(about a second per 20,000 files) instead of an overlay of the kept tree. "
                    "Overlays need root and the kernel's overlay file system.",
                    id="tandem.W004",
                )
            )
    from django.conf import settings

    from . import images

    default = settings.SANDBOX_DEFAULT_IMAGE
    try:
        images.root_of(default)
    except images.ImageError as exc:
        found.append(
            checks.Warning(
                f"SANDBOX_DEFAULT_IMAGE: {exc}.",
                hint="Tool calls of repositories using it fail until it is built "
                "(README, Sandbox images).",
                id="tandem.W003",
            )
        )
    return found
