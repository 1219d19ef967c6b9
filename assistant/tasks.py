"""Celery entry points: thin, they take ids and hand over to the agent."""

from __future__ import annotations

import contextlib

from celery import shared_task

from config import logs

from .runner import run_on_worker_loop


@shared_task(name="assistant.execute_run", acks_late=True, ignore_result=True)
def execute_run(run_id: str) -> None:
    # The pool thread waits here; the turn itself runs on the process's event loop, where
    # hundreds of turns share one thread.
    run_on_worker_loop(run_id).result()


@shared_task(name="assistant.fetch_repositories", ignore_result=True)
def fetch_repositories() -> None:
    """Celery beat, every REPO_FETCH_MINUTES: refresh every mirror (each outcome, error
    included, is recorded on its row), then delete folders of removed repositories and
    conversations."""
    from .models import Repository
    from .repos import RepoError, ensure_mirror, remove_orphans

    for repo in Repository.objects.all():
        # A failure is already on the row (the Repositories page shows it); go on to the next.
        with contextlib.suppress(RepoError):
            ensure_mirror(repo=repo)
    remove_orphans()


@shared_task(name="assistant.remove_idle_prepared_trees", ignore_result=True)
def remove_idle_prepared_trees() -> None:
    """Celery beat: delete the prepared trees no conversation started from for
    PREPARED_TREE_IDLE_DAYS (environment.py)."""
    from .environment import remove_idle

    remove_idle()


@shared_task(name="assistant.record_diff", acks_late=True, ignore_result=True)
def record_diff(run_id: str) -> None:
    from . import jobs

    with logs.bind(run=run_id):
        jobs.record_diff(run_id)


@shared_task(name="assistant.finish_stopped", acks_late=True, ignore_result=True)
def finish_stopped(run_id: str) -> None:
    from . import jobs

    with logs.bind(run=run_id):
        jobs.finish_stopped(run_id)


@shared_task(name="assistant.undo", acks_late=True, ignore_result=True)
def undo(run_id: str) -> None:
    from . import jobs

    with logs.bind(run=run_id):
        jobs.undo(run_id)


@shared_task(name="assistant.repo_job", acks_late=True, ignore_result=True)
def repo_job(job_id: str) -> None:
    from . import jobs

    with logs.bind(repo_job=job_id):
        jobs.repo_job(job_id)


JOBS = {
    "record_diff": record_diff,
    "finish_stopped": finish_stopped,
    "undo": undo,
    "repo_job": repo_job,
}


@shared_task(name="assistant.fetch_repository", ignore_result=True)
def fetch_repository(repo_id: int) -> None:
    """Mirror one repository now: the outcome, error included, is on its row. A newly added
    repository is now fetched by a fetch job (RepoJob); this stays for the messages an earlier
    version queued."""
    from .models import Repository
    from .repos import RepoError, ensure_mirror

    repo = Repository.objects.filter(pk=repo_id).first()
    if repo is not None:
        with contextlib.suppress(RepoError):
            ensure_mirror(repo=repo)
