"""Prices set by teams, and the daily rollups the dashboards read.

The rollups are kept in step with ``assistant.UsageRecord`` by usage/metering.py, in the same
transaction as each record, so a dashboard sums a few thousand daily rows instead of a million
records. ``manage.py usage_rollup`` rebuilds them from the records.

Dimension columns of the rollups are plain integers (0 = none) rather than foreign keys: a
unique key with NULLs in it never conflicts, so an upsert could not find its row, and a
deleted conversation or person must not take the team's history with it.
"""

from __future__ import annotations

from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from accounts.models import Team

COST = {"max_digits": 20, "decimal_places": 10, "default": Decimal(0)}


class ModelPrice(models.Model):
    """A team's own price for a model (self-hosted, or a negotiated rate); it wins over
    litellm's price map."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="model_prices")
    model = models.CharField(
        max_length=200, help_text="Exactly as configured, e.g. ollama_chat/llama3.1"
    )
    input_usd_per_mtok = models.DecimalField(
        "input, USD per 1M tokens",
        max_digits=12,
        decimal_places=4,
        validators=[MinValueValidator(0)],
    )
    output_usd_per_mtok = models.DecimalField(
        "output, USD per 1M tokens",
        max_digits=12,
        decimal_places=4,
        validators=[MinValueValidator(0)],
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model"]
        constraints = [models.UniqueConstraint(fields=["team", "model"], name="price_team_model")]

    def __str__(self) -> str:
        return f"{self.model}: ${self.input_usd_per_mtok}/${self.output_usd_per_mtok} per 1M"


class DailyUsage(models.Model):
    """Usage of one day (UTC) by team, model (the tool's name for tools) and kind: totals, by
    day, by model, by tool and by team. Each breakdown has a table at its own grain, so none
    reads rows split by dimensions it doesn't show (per person and per tool would have made
    this table about half as long as the records themselves)."""

    day = models.DateField()
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+", db_index=False)
    model = models.CharField(max_length=200)
    kind = models.CharField(max_length=4)
    calls = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)  # LLM calls that failed (not stopped ones)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(**COST)
    tool_calls = models.PositiveIntegerField(default=0)
    sandbox_ms = models.PositiveBigIntegerField(default=0)
    latency_ms_sum = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "day", "model", "kind"], name="dailyusage_key")
        ]
        indexes = [models.Index(fields=["day"], name="dailyusage_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.model} ({self.kind}): {self.calls} calls"


class DailyMemberUsage(models.Model):
    """Usage of one day by team and person: the dashboards' members, and the seed of a
    member's tokens for today (usage/budgets.py)."""

    day = models.DateField()
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+", db_index=False)
    user_id = models.BigIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)  # LLM calls
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(**COST)
    tool_calls = models.PositiveIntegerField(default=0)
    sandbox_ms = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "day", "user_id"], name="dailymember_key")
        ]
        indexes = [models.Index(fields=["day"], name="dailymember_day")]

    def __str__(self) -> str:
        return f"{self.day} user {self.user_id}: {self.calls} calls"


class DailyConversationUsage(models.Model):
    """Usage of one day by conversation: the dashboards' top conversations."""

    day = models.DateField()
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+", db_index=False)
    conversation_id = models.BigIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(**COST)
    tool_calls = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["team", "day", "conversation_id"], name="dailyconversation_key"
            )
        ]
        indexes = [models.Index(fields=["day"], name="dailyconversation_day")]

    def __str__(self) -> str:
        return f"{self.day} conversation {self.conversation_id}: {self.tokens} tokens"


class DailyLatency(models.Model):
    """Site-wide latency histogram of answered LLM calls, per day: the staff dashboard's
    percentiles. Bucket b holds latencies in [1.01^b, 1.01^(b+1)) ms, so a percentile read
    from it is within 1% of the exact one (see usage/dashboard.py)."""

    day = models.DateField()
    bucket = models.PositiveSmallIntegerField()
    calls = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "bucket"], name="dailylatency_key")]

    def __str__(self) -> str:
        return f"{self.day} bucket {self.bucket}: {self.calls} calls"
