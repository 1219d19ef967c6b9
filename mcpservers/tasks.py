"""Celery entry point: thin, it takes an id and hands over to the services."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="mcpservers.refresh_tools", ignore_result=True)
def refresh_tools(server_id: int) -> None:
    from .services import refresh

    refresh(server_id)
