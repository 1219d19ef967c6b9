"""Hook receivers (assistant/hooks.py). They run in the sender's thread, often a worker
thread of the agent with no transaction open: they only look up whether the team has Slack at
all (one indexed query) and queue a task after commit; the task does the talking."""

from __future__ import annotations

from django.utils import timezone

from .models import SlackConnection, Status


def _connected(team_id: int) -> bool:
    return SlackConnection.objects.filter(team_id=team_id, status=Status.ACTIVE).exists()


def on_run_ended(sender, run, **kwargs) -> None:
    from . import tasks

    if _connected(run.conversation.team_id):
        tasks.enqueue(tasks.notify_run, str(run.uuid))


def on_approval_needed(sender, call, **kwargs) -> None:
    from . import tasks

    if _connected(call.run.conversation.team_id):
        tasks.enqueue(tasks.notify_approval, str(call.uuid))


def on_conversation_shared(sender, link, by=None, **kwargs) -> None:
    from . import tasks

    if _connected(link.conversation.team_id):
        tasks.enqueue(tasks.notify_shared, str(link.uuid), getattr(by, "pk", None))


def on_budget_threshold(sender, team, percent, kind="budget", **kwargs) -> None:
    from . import tasks

    if _connected(team.pk):
        # Once per threshold per month: the delivery key carries the month.
        period = kwargs.get("period") or timezone.now().strftime("%Y-%m")
        tasks.enqueue(tasks.notify_budget, team.pk, int(percent), str(kind or "budget"), period)
