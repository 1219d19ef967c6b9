"""Celery entry points: thin, they take ids and hand over to the agent."""

from __future__ import annotations

from celery import shared_task

from .runner import run_on_worker_loop


@shared_task(name="assistant.execute_run", acks_late=True, ignore_result=True)
def execute_run(run_id: str) -> None:
    # The pool thread waits here; the turn itself runs on the process's event loop, where
    # hundreds of turns share one thread.
    run_on_worker_loop(run_id).result()
