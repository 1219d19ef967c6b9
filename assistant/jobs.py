"""Git work on a workspace that a web request asks for, done where runs execute: a Celery
worker (production) or a thread of the embedded server, never the request itself.

- ``record_diff``: compute and store a finished turn's diff (a turn from before diffs were
  stored, or one whose worker died before storing it).
- ``finish_stopped``: a turn stopped while parked ends without its worker; its files are read
  (a snapshot) and its diff stored here, then the page is told to refresh the bubble.
- ``undo``: revert one turn's changes (``git apply -R``) and read the files again (the patch
  download's tree); the bubble is refreshed with the outcome.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)

_asked: dict[int, float] = {}  # run pk → when this process last asked for its diff
ASK_AGAIN_SECONDS = 60


def enqueue(name: str, *args) -> None:
    """Run job ``name`` of this module with ``args`` once the transaction commits."""
    if settings.RUN_EXECUTOR == "celery":
        from . import tasks

        task = tasks.JOBS[name]
        transaction.on_commit(lambda: task.delay(*args))
        return

    def run() -> None:
        from django.db import connection

        try:
            globals()[name](*args)
        except Exception:
            log.exception("Job %s%r failed", name, args)
        finally:
            connection.close()  # this thread's own connection

    transaction.on_commit(
        lambda: threading.Thread(target=run, name=f"tandem-{name}", daemon=True).start()
    )


def record_diff_soon(run) -> None:
    """A page found a finished turn without its stored diff: have it computed (once a minute
    at most per process, however many people look)."""
    now = time.monotonic()
    if now - _asked.get(run.pk, -ASK_AGAIN_SECONDS) < ASK_AGAIN_SECONDS:
        return
    _asked[run.pk] = now
    if len(_asked) > 10_000:
        _asked.clear()
    enqueue("record_diff", str(run.uuid))


def record_diff(run_id: str) -> None:
    from . import diffs, events
    from .models import Run

    run = Run.objects.select_related("conversation").filter(uuid=run_id).first()
    if run is None or not run.is_finished:
        return
    diffs.record(run)
    events.publish_sync(str(run.conversation.uuid), {"t": "run.updated", "run": run_id})


def finish_stopped(run_id: str) -> None:
    from . import diffs, events, repos
    from .models import Run, Workspace

    run = Run.objects.select_related("conversation").filter(uuid=run_id).first()
    if run is None or not run.is_finished or not run.tree_before or run.tree_after:
        return
    workspace = Workspace.objects.filter(conversation_id=run.conversation_id).first()
    if workspace is None:
        return
    try:
        tree = repos.snapshot(workspace=workspace)
    except repos.RepoError:
        log.exception("Could not read the changes of stopped run %s", run_id)
        return
    Run.objects.filter(pk=run.pk, tree_after="").update(tree_after=tree)
    Workspace.objects.filter(pk=workspace.pk).update(tree=tree)
    run.tree_after = tree
    diffs.record(run)
    events.publish_sync(str(run.conversation.uuid), {"t": "run.updated", "run": run_id})


def undo(run_id: str) -> None:
    from django.utils import timezone

    from . import events, repos
    from .models import Run, Workspace
    from .services import IN_FLIGHT

    run = Run.objects.select_related("conversation").filter(uuid=run_id).first()
    if run is None or run.undo_requested_by_id is None:
        return
    workspace = Workspace.objects.filter(conversation_id=run.conversation_id).first()
    error = ""
    if run.undone_at:
        error = ""
    elif workspace is None:
        error = "This conversation no longer has a repository."
    elif run.conversation.runs.filter(status__in=IN_FLIGHT).exists():
        error = "Wait until the assistant has finished before undoing changes."
    else:
        try:
            repos.revert_between(workspace=workspace, old=run.tree_before, new=run.tree_after)
        except repos.RepoError as exc:
            error = str(exc)
    if error:
        Run.objects.filter(pk=run.pk).update(undo_requested_by=None, undo_error=error)
    elif not run.undone_at:
        Run.objects.filter(pk=run.pk).update(
            undone_by_id=run.undo_requested_by_id,
            undone_at=timezone.now(),
            undo_requested_by=None,
            undo_error="",
        )
        assert workspace is not None  # no workspace is an error above
        try:
            Workspace.objects.filter(pk=workspace.pk).update(
                tree=repos.snapshot(workspace=workspace)
            )
        except repos.RepoError:
            log.exception("Could not read the files after undoing run %s", run_id)
    events.publish_sync(str(run.conversation.uuid), {"t": "run.updated", "run": run_id})
