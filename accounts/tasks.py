"""Periodic work of the accounts app (Celery beat: config/settings.py CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="accounts.audit_retention")
def audit_retention() -> int:
    """Delete audit events past AUDIT_RETENTION_DAYS (accounts/audit.py purge_expired)."""
    from . import audit

    deleted = audit.purge_expired()
    if deleted:
        log.info("Audit log: deleted %d event(s) past the retention period", deleted)
    return deleted
