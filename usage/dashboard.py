"""The numbers behind the usage dashboards, aggregated in the database from the daily rollups
(usage/models.py): a range of 90 days reads tens of thousands of rollup rows, not a million records.

Latency percentiles are the exception, since they can't be summed: a team's come from its own
records through PostgreSQL's percentile_cont (an index-only scan of a partial index); the
site's from the daily latency histogram, within 1% of exact, because sorting every answered
call of the site for a 90-day range took 220-600 ms on its own (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q, QuerySet, Sum
from django.utils import timezone

from .models import DailyConversationUsage, DailyLatency, DailyMemberUsage, DailyUsage
from .rollups import LATENCY_BASE

PRESETS = (7, 30, 90)
DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP = 10
ZERO = Decimal(0)


@contextmanager
def reading() -> Iterator[None]:
    """Around a dashboard's queries (and its rendering, which runs them): room to aggregate in
    memory. The site's top conversations group ~100k rollup rows into ~25k, which spilled to
    disk at PostgreSQL's default work_mem (4 MB) and took 60-80% longer."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '32MB'")
        yield


def money(usd) -> str:
    """Dollars as people read them: "0" for nothing, cents from a dollar up, and up to four
    decimals below (model calls cost fractions of a cent), without trailing zeros."""
    if not usd:
        return "0"
    if usd >= 1:
        return f"{usd:.2f}"
    text = f"{usd:.4f}".rstrip("0")
    return text if len(text.split(".")[1]) >= 2 else f"{usd:.2f}"


# --- The date range ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DateRange:
    start: date
    end: date  # inclusive
    preset: int | None = None
    note: str = ""  # why the range asked for was not used as is

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, datetime.min.time(), tzinfo=UTC)

    @property
    def end_before(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)

    def each_day(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]

    @property
    def query(self) -> str:
        return f"from={self.start.isoformat()}&to={self.end.isoformat()}"


def parse_range(params, today: date | None = None) -> DateRange:
    """From ``?days=7|30|90`` or ``?from=YYYY-MM-DD&to=YYYY-MM-DD`` (UTC days, inclusive)."""
    today = today or timezone.now().astimezone(UTC).date()
    days = params.get("days", "")
    if days.isdigit() and int(days) in PRESETS:
        return DateRange(today - timedelta(days=int(days) - 1), today, int(days))
    if not params.get("from") and not params.get("to"):
        return DateRange(today - timedelta(days=DEFAULT_DAYS - 1), today, DEFAULT_DAYS)
    note = ""
    try:
        end = date.fromisoformat(params["to"]) if params.get("to") else today
        start = (
            date.fromisoformat(params["from"])
            if params.get("from")
            else end - timedelta(days=DEFAULT_DAYS - 1)
        )
    except ValueError:
        note = "That date range could not be read; showing the last 30 days."
        return DateRange(today - timedelta(days=DEFAULT_DAYS - 1), today, DEFAULT_DAYS, note)
    if start > end:
        start, end = end, start
    if (end - start).days + 1 > MAX_DAYS:
        start = end - timedelta(days=MAX_DAYS - 1)
        note = f"A range can span at most {MAX_DAYS} days; showing the last {MAX_DAYS} of it."
    preset = next((p for p in PRESETS if end == today and (end - start).days + 1 == p), None)
    return DateRange(start, end, preset, note)


# --- Rows ----------------------------------------------------------------------------------------


@dataclass
class Row:
    """Sums over some slice of the range."""

    key: Any = None  # what the row sums over: a day, a team's or member's id, (model, kind)…
    label: str = ""
    calls: int = 0  # LLM calls
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = ZERO
    tool_calls: int = 0
    sandbox_ms: int = 0
    latency_ms_sum: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def sandbox_seconds(self) -> float:
        return self.sandbox_ms / 1000

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls * 100 if self.calls else None

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_ms_sum / self.calls if self.calls else None

    @cached_property
    def text(self) -> dict[str, str]:
        """The figures as the page shows them, formatted once (Django's intcomma and
        floatformat filters cost ~40 µs a cell, which added up to tens of milliseconds)."""
        return {
            "day": self.key.isoformat() if isinstance(self.key, date) else "",
            "calls": f"{self.calls:,}",
            "errors": f"{self.errors:,}",
            "tokens": f"{self.tokens:,}",
            "prompt_tokens": f"{self.prompt_tokens:,}",
            "completion_tokens": f"{self.completion_tokens:,}",
            "cost": money(self.cost_usd),
            "tool_calls": f"{self.tool_calls:,}",
            "sandbox": f"{self.sandbox_seconds:,.1f}",
            "latency": f"{self.mean_latency_ms:,.0f}" if self.mean_latency_ms is not None else "",
        }

    def add(self, other: Row) -> None:
        for name in (
            "calls", "errors", "prompt_tokens", "completion_tokens", "cost_usd",
            "tool_calls", "sandbox_ms", "latency_ms_sum",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))


LLM = Q(kind="llm")
SUMS = {
    "calls": Sum("calls", filter=LLM, default=0),  # tool rows count executions as calls
    "errors": Sum("errors", default=0),
    "prompt_tokens": Sum("prompt_tokens", default=0),
    "completion_tokens": Sum("completion_tokens", default=0),
    "cost_usd": Sum("cost_usd", default=ZERO),
    "tool_calls": Sum("tool_calls", default=0),
    "sandbox_ms": Sum("sandbox_ms", default=0),
    "latency_ms_sum": Sum("latency_ms_sum", default=0),
}


# The member rollup has no latency, and counts only LLM calls as calls.
MEMBER_SUMS = {k: v for k, v in SUMS.items() if k != "latency_ms_sum"}
MEMBER_SUMS["calls"] = Sum("calls", default=0)


def _rows(qs: QuerySet, key: str, sums: dict = SUMS) -> list[Row]:
    return [
        Row(key=r[key], **{name: r[name] for name in sums})
        for r in qs.values(key).annotate(**sums).order_by()
    ]


# --- Percentiles -------------------------------------------------------------------------------


def percentile(sorted_values: list[int], p: float) -> float | None:
    """percentile_cont: linear interpolation between the two nearest ranks."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * p
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def team_latency(team_id: int, rng: DateRange) -> tuple[float | None, float | None]:
    """Exact p50 and p95 of the team's answered calls in the range."""
    where = (team_id, rng.start_at, rng.end_before)
    if connection.vendor == "postgresql":
        from .models import UsageRecord

        table = UsageRecord._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), "  # noqa: S608
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) "
                f"FROM {table} WHERE team_id = %s AND created >= %s AND created < %s "
                "AND kind = 'llm' AND outcome = 'ok'",
                where,
            )
            p50, p95 = cursor.fetchone()
        return p50, p95
    # SQLite (embedded mode: one small team's data) has no percentile_cont.
    from .models import UsageRecord

    values = list(
        UsageRecord.objects.filter(
            team_id=team_id,
            created__gte=rng.start_at,
            created__lt=rng.end_before,
            kind="llm",
            outcome="ok",
        )
        .order_by("latency_ms")
        .values_list("latency_ms", flat=True)
    )
    return percentile(values, 0.5), percentile(values, 0.95)


def histogram_percentile(buckets: list[tuple[int, int]], p: float) -> float | None:
    """percentile_cont read from (bucket, count) pairs sorted by bucket: the two ranks it
    interpolates between are found exactly, and each value is its bucket's middle (bucket b
    spans [1.01^b, 1.01^(b+1)), so each is within 0.5%, and so is the result)."""
    total = sum(count for _, count in buckets)
    if not total:
        return None
    position = (total - 1) * p
    low = math.floor(position)
    high = min(low + 1, total - 1)
    values: dict[int, float] = {}
    seen = 0
    for bucket, count in buckets:
        for rank in (low, high):
            if rank not in values and seen <= rank < seen + count:
                values[rank] = LATENCY_BASE ** (bucket + 0.5)
        if high in values:
            break
        seen += count
    return values[low] + (values[high] - values[low]) * (position - low)


def site_latency(rng: DateRange) -> tuple[float | None, float | None]:
    buckets = list(
        DailyLatency.objects.filter(day__range=(rng.start, rng.end))
        .values("bucket")
        .annotate(n=Sum("calls"))
        .order_by("bucket")
        .values_list("bucket", "n")
    )
    return histogram_percentile(buckets, 0.5), histogram_percentile(buckets, 0.95)


# --- Reports ------------------------------------------------------------------------------------


class Report:
    """A team's figures for a range (``team``), or the whole site's (``team=None``). Each
    section is queried when first read: a CSV export reads one, the page all of them."""

    def __init__(self, rng: DateRange, team=None) -> None:
        self.range = rng
        self.team = team
        days = {"day__range": (rng.start, rng.end)}
        scope = {"team": team, **days} if team is not None else days
        self.usage = DailyUsage.objects.filter(**scope)
        self.members = DailyMemberUsage.objects.filter(**scope)
        self.conversations = DailyConversationUsage.objects.filter(**scope)

    @property
    def staff(self) -> bool:
        return self.team is None

    @cached_property
    def by_day(self) -> list[Row]:
        found = {row.key: row for row in _rows(self.usage, "day")}
        return [found.get(day) or Row(key=day) for day in self.range.each_day()]

    @cached_property
    def totals(self) -> Row:
        total = Row(key="total", label="Total")
        for row in self.by_day:
            total.add(row)
        return total

    @cached_property
    def by_member(self) -> list[Row]:
        rows = _sorted(_rows(self.members, "user_id", MEMBER_SUMS))
        if self.staff:
            rows = rows[: TOP * 5]
        _name_users(rows)
        return rows

    @cached_property
    def _by_model_and_kind(self) -> list[tuple[str, Row]]:
        # Models and tools in one pass over the rollup (a tool's name is its "model").
        return [
            (r["kind"], Row(key=r["model"], label=r["model"], **{n: r[n] for n in SUMS}))
            for r in self.usage.values("model", "kind").annotate(**SUMS).order_by()
        ]

    @cached_property
    def by_model(self) -> list[Row]:
        return _sorted([row for kind, row in self._by_model_and_kind if kind == "llm"])

    @cached_property
    def by_tool(self) -> list[Row]:
        rows = [row for kind, row in self._by_model_and_kind if kind == "tool"]
        return sorted(rows, key=lambda r: (-r.tool_calls, r.label))

    @cached_property
    def top_conversations(self) -> list[Row]:
        return _top_conversations(self.conversations)

    @cached_property
    def latency(self) -> tuple[float | None, float | None]:
        return site_latency(self.range) if self.staff else team_latency(self.team.pk, self.range)

    @property
    def p50_ms(self) -> float | None:
        return self.latency[0]

    @property
    def p95_ms(self) -> float | None:
        return self.latency[1]

    @cached_property
    def by_team(self) -> list[Row]:
        from accounts.models import Team

        if not self.staff:
            return []
        rows = _rows(self.usage, "team_id")
        teams = {t.pk: t for t in Team.objects.filter(pk__in=[r.key for r in rows])}
        spent = month_spent_by_team(list(teams))
        for row in rows:
            team = teams.get(row.key)
            row.label = team.name if team else "(deleted team)"
            row.extra["team"] = team
            row.extra["budget"] = budget_used(team, spent.get(row.key, ZERO)) if team else None
        return _sorted(rows)

    def chart(self) -> dict:
        """The by-day figures the chart draws, as the table below it shows them."""
        return {
            "labels": [row.key.isoformat() for row in self.by_day],
            "tokens": [row.tokens for row in self.by_day],
            "cost": [float(row.text["cost"]) for row in self.by_day],
        }


def _name_users(rows: list[Row]) -> None:
    from accounts.models import User

    ids = [row.key for row in rows if row.key]
    names = {u.pk: (u.name, u.email) for u in User.objects.filter(pk__in=ids)}
    for row in rows:
        name, email = names.get(row.key, ("", ""))
        row.label = name or ("(no one)" if not row.key else "(deleted user)")
        row.extra["email"] = email


def _top_conversations(qs: QuerySet) -> list[Row]:
    from assistant.models import Conversation

    top = list(
        qs.values("conversation_id")  # its team comes with the conversation below
        .annotate(
            calls=Sum("calls"),
            tokens=Sum("tokens"),
            cost_usd=Sum("cost_usd"),
            tool_calls=Sum("tool_calls"),
        )
        .order_by("-cost_usd", "-tokens", "conversation_id")[:TOP]
    )
    ids = [r["conversation_id"] for r in top if r["conversation_id"]]
    found = {
        c.pk: c
        for c in Conversation.objects.filter(pk__in=ids)
        .select_related("team")
        .only("uuid", "title", "team__slug", "team__name")
    }
    rows = []
    for r in top:
        conversation = found.get(r["conversation_id"])
        row = Row(
            key=r["conversation_id"],
            label=conversation.display_title if conversation else "(deleted conversation)",
            calls=r["calls"],
            prompt_tokens=r["tokens"],  # the conversation rollup keeps tokens as one sum
            cost_usd=r["cost_usd"],
            tool_calls=r["tool_calls"],
        )
        row.extra["conversation"] = conversation
        rows.append(row)
    return rows


def _sorted(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (-r.cost_usd, -r.tokens, -r.tool_calls, str(r.label)))


def team_report(team, rng: DateRange) -> Report:
    return Report(rng, team)


def site_report(rng: DateRange) -> Report:
    return Report(rng)


# --- Budget used ---------------------------------------------------------------------------------


def month_spent_by_team(team_ids: list[int], now: datetime | None = None) -> dict[int, Decimal]:
    """This calendar month's spending (UTC) of each team, from the rollups."""
    from .budgets import month_start, next_month

    now = now or timezone.now()
    rows = (
        DailyUsage.objects.filter(
            team_id__in=team_ids, day__gte=month_start(now), day__lt=next_month(now)
        )
        .values("team_id")
        .annotate(cost=Sum("cost_usd"))
        .order_by()
    )
    return {r["team_id"]: r["cost"] or ZERO for r in rows}


@dataclass(frozen=True)
class BudgetUsed:
    budget_usd: Decimal | None
    spent_usd: Decimal
    daily_tokens: int | None
    top_member_tokens_today: int = 0
    top_member: str = ""

    @property
    def percent(self) -> float | None:
        if self.budget_usd is None:
            return None
        if self.budget_usd <= 0:
            return 100.0
        return float(self.spent_usd / self.budget_usd * 100)


def budget_used(team, spent: Decimal) -> BudgetUsed:
    return BudgetUsed(team.monthly_budget_usd, spent, team.member_daily_tokens)


def team_budget(team, now: datetime | None = None) -> BudgetUsed:
    """The month's spending against the budget, and the member who used most tokens today."""
    from accounts.models import User

    now = now or timezone.now()
    spent = month_spent_by_team([team.pk], now).get(team.pk, ZERO)
    top = (
        DailyMemberUsage.objects.filter(team=team, day=now.astimezone(UTC).date())
        .exclude(user_id=0)
        .values("user_id")
        .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("-tokens")
        .first()
    )
    name = ""
    if top:
        user = User.objects.filter(pk=top["user_id"]).first()
        name = user.name if user else "(deleted user)"
    return BudgetUsed(
        team.monthly_budget_usd,
        spent,
        team.member_daily_tokens,
        top["tokens"] if top else 0,
        name,
    )
