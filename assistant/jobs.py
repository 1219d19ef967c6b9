"""Git work on a workspace that a web request asks for, done where runs execute: a Celery
worker (production) or a thread of the embedded server, never the request itself.

- ``record_diff``: compute and store a finished turn's diff (a turn from before diffs were
  stored, or one whose worker died before storing it).
- ``finish_stopped``: a turn stopped while parked ends without its worker; its files are read
  (a snapshot) and its diff stored here, then the page is told to refresh the bubble.
- ``undo``: revert one turn's changes (``git apply -R``) and read the files again (the patch
  download's tree); the bubble is refreshed with the outcome.
- ``repo_job``: what a page or the API asked of a repository (a ``RepoJob`` row): fetch it,
  prepare a conversation's workspace (attach), push its changes, write its patch, open a
  pull request from the branch pushed (assistant/forges.py). The row
  says queued → running → done or failed (in words); pages poll it. With these the web process
  never reads REPOS_ROOT: only workers mount the repositories.
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


# --- Repository jobs (RepoJob rows) --------------------------------------------------------------


def repo_job(job_id: str) -> None:
    """Do one RepoJob, once: claimed by a conditional UPDATE (a redelivered task finds it taken),
    its outcome recorded on the row."""
    from django.utils import timezone

    from . import repos
    from .models import RepoJob, RepoJobStatus

    job = (
        RepoJob.objects.select_related("repository__team", "conversation__team", "requested_by")
        .filter(uuid=job_id)
        .first()
    )
    if job is None:
        return
    queued = RepoJob.objects.filter(pk=job.pk, status=RepoJobStatus.QUEUED)
    if not queued.update(status=RepoJobStatus.RUNNING):
        return
    fields: dict = {"status": RepoJobStatus.DONE}
    try:
        fields.update(_DO[job.kind](job))
    except repos.RepoError as exc:
        fields = {"status": RepoJobStatus.FAILED, "error": str(exc)}
    except Exception:
        log.exception("Repository job %s (%s) failed", job_id, job.kind)
        fields = {"status": RepoJobStatus.FAILED, "error": "Tandem had an internal error."}
    RepoJob.objects.filter(pk=job.pk).update(finished=timezone.now(), **fields)
    if job.kind == "attach":
        _release_waiting_runs(job)


def _fetch(job) -> dict:
    from . import repos

    repos.ensure_mirror(repo=job.repository)  # last_fetched, its error and branches on the row
    return {}


def _attach(job) -> dict:
    from . import repos

    workspace = repos.create_workspace(
        conversation=job.conversation, repo=job.repository, branch=job.branch
    )
    repos.record_usage(workspace=workspace)
    return {"branch": workspace.branch}


def _release_waiting_runs(job) -> None:
    """Runs sent while the workspace was being prepared waited queued (agent.execute_run):
    queue them again now that it is there (or could not be made)."""
    from . import runner
    from .models import Run, RunStatus

    waiting = Run.objects.filter(conversation=job.conversation, status=RunStatus.QUEUED)
    for run_id in waiting.values_list("uuid", flat=True):
        runner.enqueue_run(str(run_id))


def _push(job) -> dict:
    from . import repos
    from .models import Run, Workspace
    from .services import IN_FLIGHT

    conversation = job.conversation
    workspace = Workspace.objects.filter(conversation=conversation).first()
    if workspace is None:
        raise repos.RepoError("This conversation no longer has a repository.")
    if Run.objects.filter(conversation=conversation, status__in=IN_FLIGHT).exists():
        raise repos.RepoError("Wait until the assistant has finished before pushing.")
    if not repos.has_changes(workspace=workspace):
        raise repos.RepoError("There is nothing to push: no file was changed.")
    user = job.requested_by
    if user is None:
        raise repos.RepoError("The person who asked for the push no longer has an account.")
    # The message the person edited (checked by services.workspace_push); a job queued
    # before messages were stored gets the old fixed one.
    message = job.message or (
        f"{conversation.display_title}\n\nMade with Tandem in a conversation "
        f"of the team {conversation.team.name}.\n"
    )
    repos.commit_all(
        workspace=workspace,
        message=message,
        author_name=user.name,
        author_email=user.email,
    )
    return {"result": repos.push(workspace=workspace, remote_branch=job.branch)}


def _patch(job) -> dict:
    """The patch download, written whole into the row (at most PATCH_MAX_BYTES and a last line
    that says it was cut): the web then serves it from the database."""
    from . import diffs, repos
    from .models import Workspace

    workspace = Workspace.objects.filter(conversation=job.conversation).first()
    if workspace is None:
        raise repos.RepoError("This conversation no longer has a repository.")
    workspace.tree = job.tree or workspace.tree
    return {"patch": b"".join(diffs.patch_stream(workspace=workspace))}


def _file(job) -> dict:
    """One file of the snapshot the job names, for the read-only file view (file_links.py):
    from git objects in the sandbox, refused in words when it is not a small text file."""
    from . import file_links, repos
    from .models import RepoJobStatus, Workspace

    workspace = Workspace.objects.filter(conversation=job.conversation).first()
    if workspace is None:
        raise repos.RepoError("This conversation no longer has a repository.")
    entry = repos.tree_entry(workspace=workspace, tree=job.tree, path=job.path)
    why, words = "", ""
    limit = file_links.max_bytes()
    if entry is None:
        why, words = "missing", "There is no such file in this conversation's workspace."
    elif entry.mode == "040000":
        why, words = "folder", "This is a folder, not a file."
    elif entry.mode == "120000":
        why, words = "link", "This is a symbolic link; links are not followed."
    elif entry.mode == "160000":
        why, words = "submodule", "This is a submodule, another repository; it can't be shown."
    elif entry.size is not None and entry.size > limit:
        why = "too_large"
        words = f"This file is too large to show here ({entry.size:,} bytes; at most {limit:,})."
    if why or entry is None:
        return {"status": RepoJobStatus.FAILED, "result": why, "error": words}
    data = repos.read_blobs(workspace=workspace, ids=[entry.id]).get(entry.id, b"")
    if b"\0" in data[:8000]:  # git's own test for a binary file
        return {
            "status": RepoJobStatus.FAILED,
            "result": "binary",
            "error": "This is a binary file; it can't be shown as text.",
        }
    return {"patch": data}


def _pull_request(job) -> dict:
    """Open the pull request (or link the one open for the branch already) and record who
    did it in the audit log."""
    from accounts import audit

    from . import forges

    repo = job.repository
    found = forges.open_pull_request(
        repo, head=job.branch, base=job.base, title=job.title, body=job.message
    )
    target = forges.target_of(repo)
    audit.record(
        audit.Action.PULL_REQUEST_LINKED if found.existing else audit.Action.PULL_REQUEST_OPENED,
        team=repo.team,
        actor=job.requested_by,
        object_type="pull request",
        object_id=str(job.uuid),
        label=f"{repo.name} #{found.number}",
        after={
            "url": found.url,
            "number": found.number,
            "forge": target.name if target else "",
            "head": job.branch,
            "base": job.base,
            "conversation": str(job.conversation.uuid) if job.conversation else "",
        },
    )
    return {
        "url": found.url,
        "number": found.number,
        "result": "existing" if found.existing else "opened",
    }


_DO = {
    "fetch": _fetch,
    "attach": _attach,
    "push": _push,
    "patch": _patch,
    "file": _file,
    "pr": _pull_request,
}
