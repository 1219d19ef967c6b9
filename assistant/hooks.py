"""Signals other apps (Slack notifications, say) listen to, so the agent and the services never
import them. Receivers run in the sender's thread, inside no transaction the sender holds open
for them: a receiver that does real work queues it (Celery, after commit)."""

from __future__ import annotations

import django.dispatch

# A run reached a final status. kwargs: run (Run, with conversation and team loaded).
run_ended = django.dispatch.Signal()
# A tool call awaits a member's decision. kwargs: call (ToolCall, with run and conversation).
approval_needed = django.dispatch.Signal()
# A share link was created. kwargs: link (sharing.ShareLink), by (User).
conversation_shared = django.dispatch.Signal()
# A team's spending crossed a budget threshold. kwargs: team, percent (80 or 100), kind.
budget_threshold = django.dispatch.Signal()


def send(signal: django.dispatch.Signal, **kwargs) -> None:
    """Tell the receivers; one that fails is logged, never breaks the sender."""
    import logging

    for receiver, result in signal.send_robust(sender=None, **kwargs):
        if isinstance(result, Exception):
            logging.getLogger(__name__).error(
                "Signal receiver %r failed", receiver, exc_info=result
            )
