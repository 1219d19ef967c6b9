"""Recording usage: one UsageRecord per LLM call and per tool execution, priced, added to the
daily rollups in the same transaction, and then settled against the budget totals.

Tool executions get a record each (kind "tool") rather than one total per run: each keeps its
own time, so a run that crosses midnight, or parks for an approval and resumes on another
worker a day later, is counted on the right days; and a record is written once, never updated,
so a worker that dies mid-run loses nothing already counted.
"""

from __future__ import annotations

import logging

from django.db import transaction

from config import metrics

from . import budgets, pricing, rollups
from .models import UsageKind, UsageRecord

log = logging.getLogger(__name__)


def record_llm(*, run, model: str, usage, outcome: str) -> UsageRecord:
    team_id = run.conversation.team_id
    cost = pricing.cost(team_id, model, usage.prompt_tokens, usage.completion_tokens)
    with transaction.atomic():
        record = UsageRecord.objects.create(
            team_id=team_id,
            user_id=run.requested_by_id,
            conversation_id=run.conversation_id,
            run=run,
            api_key_id=run.api_key_id,
            model=model,
            provider=pricing.provider_of(model),
            kind=UsageKind.LLM,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=cost,
            latency_ms=usage.latency_ms,
            ttft_ms=usage.ttft_ms,
            outcome=outcome,
        )
        rollups.add(record)
    metrics.safely(lambda: _count_llm(model, usage, outcome, cost))
    try:
        budgets.settle_for(
            team_id=team_id,
            user_id=run.requested_by_id,
            hold_id=str(run.uuid),
            cost_usd=cost,
            tokens=usage.prompt_tokens + usage.completion_tokens,
        )
    except Exception:
        # The record is saved; the totals are reseeded from the rollups next month (or
        # after Redis loses them). A failed reply is worse than a total off by one call.
        log.exception("Could not settle the budget totals for run %s", run.uuid)
    _announce_threshold(run, cost)
    return record


def _count_llm(model: str, usage, outcome: str, cost) -> None:
    metrics.LLM_CALLS.labels(model, outcome).inc()
    metrics.LLM_TOKENS.labels(model, "prompt").inc(usage.prompt_tokens or 0)
    metrics.LLM_TOKENS.labels(model, "completion").inc(usage.completion_tokens or 0)
    metrics.LLM_COST.labels(model).inc(float(cost or 0))
    metrics.LLM_LATENCY.labels(model, outcome).observe((usage.latency_ms or 0) / 1000)


def _announce_threshold(run, cost) -> None:
    """Tell the hooks' listeners (Slack) when this call took the month's spending across the
    warning level or the budget itself. Teams without a budget cost nothing here."""
    from django.conf import settings

    from assistant import hooks

    team = run.conversation.team
    if not team.monthly_budget_usd or not cost:
        return
    try:
        spent = budgets.status(team.pk, None).spent_usd
    except Exception:
        log.exception("Could not read the budget totals of team %s", team.pk)
        return
    if spent is None:
        return
    for percent in sorted({settings.BUDGET_WARN_PERCENT, 100}):
        line = team.monthly_budget_usd * percent / 100
        if spent - cost < line <= spent:
            hooks.send(hooks.budget_threshold, team=team, percent=percent, kind="budget")


def record_tool(*, run, name: str, duration_ms: int, outcome: str = "ok") -> UsageRecord:
    with transaction.atomic():
        record = UsageRecord.objects.create(
            team_id=run.conversation.team_id,
            user_id=run.requested_by_id,
            conversation_id=run.conversation_id,
            run=run,
            api_key_id=run.api_key_id,
            model=name,
            provider="sandbox",
            kind=UsageKind.TOOL,
            tool_calls=1,
            sandbox_ms=max(int(duration_ms or 0), 0),
            latency_ms=max(int(duration_ms or 0), 0),
            outcome=outcome,
        )
        rollups.add(record)
    seconds = max(int(duration_ms or 0), 0) / 1000
    metrics.safely(lambda: metrics.TOOL_EXECUTIONS.labels(name, outcome).inc())
    metrics.safely(lambda: metrics.SANDBOX_SECONDS.labels(name).inc(seconds))
    return record
