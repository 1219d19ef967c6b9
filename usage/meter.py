"""usage's side of assistant.hooks.Meter: the chat services and the agent reach metering and
budgets through it (registered in apps.py), since assistant may not import usage. Each call
looks the function up when it is made, so a test that replaces one is heard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import budgets, metering
from .models import UsageRecord

if TYPE_CHECKING:
    from accounts.models import Team, User
    from assistant.llm import Usage
    from assistant.models import Run


class UsageMeter:
    def check(self, *, team: Team, user: User) -> None:
        budgets.check(team=team, user=user)

    def reserve(self, *, run: Run, model: str, messages: list[dict[str, Any]]) -> None:
        budgets.reserve(run=run, model=model, messages=messages)

    def record_llm(self, *, run: Run, model: str, usage: Usage, outcome: str) -> None:
        metering.record_llm(run=run, model=model, usage=usage, outcome=outcome)

    def record_tool(self, *, run: Run, name: str, duration_ms: int, outcome: str) -> None:
        metering.record_tool(run=run, name=name, duration_ms=duration_ms, outcome=outcome)

    def tokens_used(self, run: Run) -> int:
        totals = UsageRecord.objects.filter(run=run).values_list(
            "prompt_tokens", "completion_tokens"
        )
        return sum(p + c for p, c in totals)
