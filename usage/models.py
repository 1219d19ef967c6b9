"""Prices set by teams, and the daily rollups the dashboards read.

The rollups are kept in step with ``UsageRecord`` by usage/metering.py, in the same
transaction as each record, so a dashboard sums a few thousand daily rows instead of a million
records. ``manage.py usage_rollup`` rebuilds them from the records.

Dimension columns of the rollups are plain integers (0 = none) rather than foreign keys: a
unique key with NULLs in it never conflicts, so an upsert could not find its row, and a
deleted conversation or person must not take the team's history with it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from accounts.models import Team
from assistant.models import Conversation, Run

COST: dict[str, Any] = {"max_digits": 20, "decimal_places": 10, "default": Decimal(0)}


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


class UsageKind(models.TextChoices):
    LLM = "llm", "LLM call"
    TOOL = "tool", "Tool execution"


class UsageRecord(models.Model):
    """One metered event: an LLM call (tokens, cost, latency, outcome) or one tool execution
    in the sandbox (kind "tool": ``model`` holds the tool's name, ``sandbox_ms`` its time).

    Written by usage/metering.py, which also keeps the daily rollups the dashboards read.
    It lived in assistant once and keeps that table (the move changed no row).
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    run = models.ForeignKey(Run, on_delete=models.SET_NULL, null=True, related_name="usage")
    model = models.CharField(max_length=200)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, default="ok")
    created = models.DateTimeField(default=timezone.now)
    api_key = models.ForeignKey(
        "api.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    provider = models.CharField(max_length=50, blank=True)  # "openai" of "openai/gpt-4o"
    # What the call cost, priced when it was recorded (a team's own price, else litellm's map;
    # 0 for a model neither knows). Ten places: a small call costs millionths of a dollar.
    cost_usd = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    kind = models.CharField(max_length=4, choices=UsageKind.choices, default=UsageKind.LLM)
    tool_calls = models.PositiveIntegerField(default=0)
    sandbox_ms = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "assistant_usagerecord"
        indexes = [
            models.Index(fields=["team", "created"], name="usage_team_created"),
            # Latency percentiles of a team's answered calls, read from the index alone
            # (latency as a key column, not INCLUDE: SQLite has no INCLUDE and would warn).
            models.Index(
                fields=["team", "created", "latency_ms"],
                condition=models.Q(kind="llm", outcome="ok"),
                name="usage_team_latency",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model}: {self.prompt_tokens}+{self.completion_tokens} tokens"
