"""Signals other apps (Slack notifications, say) listen to, so the agent and the services never
import them. Receivers run in the sender's thread, inside no transaction the sender holds open
for them: a receiver that does real work queues it (Celery, after commit)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import django.dispatch
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from accounts.models import Team, User

    from .llm import Usage
    from .models import Run

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


class Meter(Protocol):
    """Metering and budgets, as the chat services and the agent need them. usage/ implements
    it and registers it when the app is ready (usage/apps.py): usage sits above assistant, so
    assistant knows only this interface, never usage's modules."""

    def check(self, *, team: Team, user: User) -> None:
        """Raise errors.BudgetExceeded when the team's budget or the member's tokens for today
        are used up (before a message is accepted)."""

    def reserve(self, *, run: Run, model: str, messages: list[dict[str, Any]]) -> None:
        """Before a model call: raise errors.BudgetExceeded, or hold the call's estimate.
        Synchronous: the agent calls it in the same trip to a pool thread that built the
        prompt."""

    def record_llm(self, *, run: Run, model: str, usage: Usage, outcome: str) -> None:
        """After a model call: record, price and settle it."""

    def record_tool(self, *, run: Run, name: str, duration_ms: int, outcome: str) -> None:
        """After a tool execution in the sandbox."""

    def tokens_used(self, run: Run) -> int:
        """The tokens the run's model calls have used so far."""


_meter: Meter | None = None


def register_meter(meter: Meter) -> None:
    global _meter
    _meter = meter


def meter() -> Meter:
    # Loud rather than a meter that lets everything through: budgets must not silently lapse.
    if _meter is None:
        raise ImproperlyConfigured("No usage meter registered: is 'usage' in INSTALLED_APPS?")
    return _meter
