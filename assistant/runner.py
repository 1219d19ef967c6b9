"""Where runs execute.

- ``celery`` (production): the run is queued; a worker executes it on an event loop the worker
  process keeps for its whole life, so one process holds many runs at once (pool threads only
  wait on the loop) and publishing reuses the loop's Redis connections.
- ``inprocess`` (embedded): the run is an asyncio task on the server's own loop, the one the
  in-memory channel layer lives on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

_server_loop: asyncio.AbstractEventLoop | None = None
_tasks: set[asyncio.Task] = set()


def remember_server_loop() -> None:
    """Called from the ASGI application on every request: notes the loop Daphne runs on."""
    global _server_loop
    _server_loop = asyncio.get_running_loop()


def enqueue_run(run_id: str) -> None:
    if settings.RUN_EXECUTOR == "celery":
        from .tasks import execute_run

        execute_run.delay(run_id)
        return
    loop = _server_loop
    if loop is None or loop.is_closed():
        # Not inside the server (a management command, say): run on the worker loop of this
        # process instead.
        run_on_worker_loop(run_id)
        return
    asyncio.run_coroutine_threadsafe(_start_task(run_id), loop)


async def _start_task(run_id: str) -> None:
    from .agent import execute_run

    task = asyncio.create_task(execute_run(run_id))
    _tasks.add(task)  # keep a reference: the loop holds tasks only weakly
    task.add_done_callback(_tasks.discard)
    task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception():
        log.error("Run task crashed", exc_info=task.exception())


# --- The worker process's long-lived loop -------------------------------------------------------
_worker_loop: asyncio.AbstractEventLoop | None = None
_worker_lock = threading.Lock()


def worker_loop() -> asyncio.AbstractEventLoop:
    """One event loop per process, in a daemon thread, made on first use (after any fork)."""
    global _worker_loop
    with _worker_lock:
        if _worker_loop is None or _worker_loop.is_closed():
            try:
                import uvloop

                loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            except ImportError:
                loop = asyncio.new_event_loop()
            # The turns' database calls (db_sync_to_async) run on the loop's default executor,
            # min(32, cores + 4) threads by default: 6 on two cores, fewer than the pool's
            # connections, so runs starting together queued for a thread while connections
            # sat idle. One thread per pooled connection (without a pool, as many as a pool
            # would have by default).
            loop.set_default_executor(
                ThreadPoolExecutor(
                    max_workers=max(4, settings.DATABASE_POOL_SIZE or 10),
                    thread_name_prefix="tandem-run-db",
                )
            )
            thread = threading.Thread(target=loop.run_forever, name="tandem-run-loop", daemon=True)
            thread.start()
            _worker_loop = loop
        return _worker_loop


def run_on_worker_loop(run_id: str) -> Future:
    from .agent import execute_run

    return asyncio.run_coroutine_threadsafe(execute_run(run_id), worker_loop())


# --- Sweeping runs whose worker died --------------------------------------------------------------
# Every ORPHAN_SWEEP_SECONDS: runs of a worker whose alive key expired (killed -9, machine
# gone) are failed with their partial text, so a run is settled within about
# readiness.WORKER_ALIVE_SECONDS + ORPHAN_SWEEP_SECONDS of its worker's death (measured by
# bench/cluster.py), and queued runs whose task went with a restarted Redis are queued again.
# Every SWEEP_SECONDS: runs whose own heartbeat stopped (any executor).
ORPHAN_SWEEP_SECONDS = 2
SWEEP_SECONDS = 60


def start_sweeper() -> None:
    """Every worker process sweeps now and then; the sweep is safe to run concurrently."""
    asyncio.run_coroutine_threadsafe(_sweep_forever(), worker_loop())


async def _sweep_forever() -> None:
    from config.db import db_sync_to_async

    from .services import (
        fail_orphaned_runs,
        fail_stale_repo_jobs,
        fail_stale_runs,
        requeue_lost_runs,
    )

    sweeps: list[tuple[Any, int, str]] = [
        (db_sync_to_async(fail_orphaned_runs), ORPHAN_SWEEP_SECONDS, "run(s) whose worker is gone"),
        (
            db_sync_to_async(requeue_lost_runs),
            ORPHAN_SWEEP_SECONDS,
            "run(s) queued in a lost Redis",
        ),
        (db_sync_to_async(fail_stale_runs), SWEEP_SECONDS, "run(s) whose heartbeat stopped"),
        # Repository jobs (attach, fetch, push, patch) whose worker died mid-job.
        (
            db_sync_to_async(fail_stale_repo_jobs),
            SWEEP_SECONDS,
            "repository job(s) whose worker died",
        ),
    ]
    loop = asyncio.get_running_loop()
    due = [0.0] * len(sweeps)
    while True:
        for i, (sweep, every, what) in enumerate(sweeps):
            if loop.time() < due[i]:
                continue
            due[i] = loop.time() + every
            try:
                count = await sweep()
                if count:
                    log.warning("Settled %d %s", count, what)
            except Exception as exc:
                # The database or Redis is away (a restart): next time.
                log.warning("Sweeping %s failed: %r", what, exc)
        await asyncio.sleep(ORPHAN_SWEEP_SECONDS)
