"""The daily rollups: added to with each usage record, or rebuilt from the records.

Each record adds to its rows with one ``INSERT … ON CONFLICT DO UPDATE`` per table (PostgreSQL
and SQLite both speak it), so concurrent writers never lose an increment and never need a
lock of their own: the row lock of the upsert orders them.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Case, Count, F, IntegerField, Q, Sum, Value, When
from django.db.models.functions import Coalesce, Floor, Ln, TruncDate

from .models import (
    DailyConversationUsage,
    DailyLatency,
    DailyMemberUsage,
    DailyUsage,
    UsageKind,
    UsageRecord,
)

# Outcomes that are not errors: answered, or stopped by a person.
NOT_ERRORS = ("ok", "cancelled")
LATENCY_BASE = 1.01
# The histogram covers one hour; anything longer lands in the last bucket.
MAX_BUCKET = math.floor(math.log(3_600_000) / math.log(LATENCY_BASE))


def latency_bucket(latency_ms: int) -> int:
    return min(math.floor(math.log(max(latency_ms, 1)) / math.log(LATENCY_BASE)), MAX_BUCKET)


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _upsert(model, key: dict, values: dict) -> None:
    table = model._meta.db_table
    columns = [*key, *values]
    set_clause = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in values)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - names are ours
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {set_clause}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*key.values(), *values.values()])


def add(record: UsageRecord) -> None:
    """Count ``record`` in the rollups (call inside the transaction that saved it)."""
    day = day_of(record.created)
    llm = record.kind == UsageKind.LLM
    tokens = record.prompt_tokens + record.completion_tokens
    sums = {
        "errors": int(llm and record.outcome not in NOT_ERRORS),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost_usd": record.cost_usd,
        "tool_calls": record.tool_calls,
        "sandbox_ms": record.sandbox_ms,
    }
    _upsert(
        DailyUsage,
        {"team_id": record.team_id, "day": day, "model": record.model, "kind": record.kind},
        {"calls": 1, **sums, "latency_ms_sum": record.latency_ms if llm else 0},
    )
    _upsert(
        DailyMemberUsage,
        {"team_id": record.team_id, "day": day, "user_id": record.user_id or 0},
        {"calls": int(llm), **sums},
    )
    _upsert(
        DailyConversationUsage,
        {"team_id": record.team_id, "day": day, "conversation_id": record.conversation_id or 0},
        {
            "calls": int(llm),
            "tokens": tokens,
            "cost_usd": record.cost_usd,
            "tool_calls": record.tool_calls,
        },
    )
    if llm and record.outcome == "ok":
        _upsert(
            DailyLatency,
            {"day": day, "bucket": latency_bucket(record.latency_ms)},
            {"calls": 1},
        )


def _bounds(start: date | None, end: date | None) -> Q:
    q = Q()
    if start is not None:
        q &= Q(created__gte=datetime.combine(start, datetime.min.time(), tzinfo=UTC))
    if end is not None:
        after = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        q &= Q(created__lt=after)
    return q


@transaction.atomic
def rebuild(
    start: date | None = None, end: date | None = None, batch: int = 5000, *, apps=None
) -> int:
    """Recompute the rollups of the days from ``start`` to ``end`` (inclusive; None: all)
    from the usage records, in the database. Returns the number of rollup rows written.
    ``apps``: a migration's historical models, when a migration calls this."""
    if apps is not None:
        try:
            UsageRecord = apps.get_model("usage", "UsageRecord")  # noqa: N806
        except LookupError:  # before usage 0002, the historical model is still assistant's
            UsageRecord = apps.get_model("assistant", "UsageRecord")  # noqa: N806
        DailyUsage = apps.get_model("usage", "DailyUsage")  # noqa: N806
        DailyMemberUsage = apps.get_model("usage", "DailyMemberUsage")  # noqa: N806
        DailyConversationUsage = apps.get_model("usage", "DailyConversationUsage")  # noqa: N806
        DailyLatency = apps.get_model("usage", "DailyLatency")  # noqa: N806
    else:
        from .models import (
            DailyConversationUsage,
            DailyLatency,
            DailyMemberUsage,
            DailyUsage,
            UsageRecord,
        )
    days = Q()
    if start is not None:
        days &= Q(day__gte=start)
    if end is not None:
        days &= Q(day__lte=end)
    for model in (DailyUsage, DailyMemberUsage, DailyConversationUsage, DailyLatency):
        model.objects.filter(days).delete()
    records = UsageRecord.objects.filter(_bounds(start, end)).annotate(day=TruncDate("created"))
    is_llm = Q(kind=UsageKind.LLM)
    errors = Count("id", filter=is_llm & ~Q(outcome__in=NOT_ERRORS))
    written = 0
    sums = {
        "e": errors,
        "p": Sum("prompt_tokens"),
        "c": Sum("completion_tokens"),
        "cost": Sum("cost_usd"),
        "t": Sum("tool_calls"),
        "s": Sum("sandbox_ms"),
    }
    usage = (
        records.values("team_id", "day", "model", "kind")
        .annotate(n=Count("id"), lat=Coalesce(Sum("latency_ms", filter=is_llm), 0), **sums)
        .order_by()
    )
    written += _insert(
        DailyUsage,
        (
            DailyUsage(
                team_id=r["team_id"], day=r["day"], model=r["model"], kind=r["kind"],
                calls=r["n"], errors=r["e"], prompt_tokens=r["p"], completion_tokens=r["c"],
                cost_usd=r["cost"], tool_calls=r["t"], sandbox_ms=r["s"],
                latency_ms_sum=r["lat"],
            )
            for r in usage.iterator(chunk_size=batch)
        ),
        batch,
    )  # fmt: skip
    members = (
        records.values("team_id", "day", "user_id")
        .annotate(n=Count("id", filter=is_llm), **sums)
        .order_by()
    )
    written += _insert(
        DailyMemberUsage,
        (
            DailyMemberUsage(
                team_id=r["team_id"], day=r["day"], user_id=r["user_id"] or 0, calls=r["n"],
                errors=r["e"], prompt_tokens=r["p"], completion_tokens=r["c"],
                cost_usd=r["cost"], tool_calls=r["t"], sandbox_ms=r["s"],
            )
            for r in members.iterator(chunk_size=batch)
        ),
        batch,
    )  # fmt: skip
    conversations = (
        records.values("team_id", "day", "conversation_id")
        .annotate(
            n=Count("id", filter=is_llm),
            tok=Sum(F("prompt_tokens") + F("completion_tokens")),
            cost=Sum("cost_usd"),
            t=Sum("tool_calls"),
        )
        .order_by()
    )
    written += _insert(
        DailyConversationUsage,
        (
            DailyConversationUsage(
                team_id=r["team_id"], day=r["day"], conversation_id=r["conversation_id"] or 0,
                calls=r["n"], tokens=r["tok"], cost_usd=r["cost"], tool_calls=r["t"],
            )
            for r in conversations.iterator(chunk_size=batch)
        ),
        batch,
    )  # fmt: skip
    bucket = Case(
        When(latency_ms__lt=1, then=Value(0)),
        default=Floor(Ln(F("latency_ms")) / Value(math.log(LATENCY_BASE))),
        output_field=IntegerField(),
    )
    latencies = (
        records.filter(is_llm, outcome="ok")
        .annotate(b=bucket)
        .values("day", "b")
        .annotate(n=Count("id"))
        .order_by()
    )
    merged: dict[tuple[date, int], int] = {}
    for r in latencies.iterator(chunk_size=batch):
        key = (r["day"], min(int(r["b"]), MAX_BUCKET))
        merged[key] = merged.get(key, 0) + r["n"]
    written += _insert(
        DailyLatency,
        (DailyLatency(day=d, bucket=b, calls=n) for (d, b), n in merged.items()),
        batch,
    )
    return written


def _insert(model, rows, batch: int) -> int:
    count = 0
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= batch:
            model.objects.bulk_create(chunk)
            count += len(chunk)
            chunk = []
    if chunk:
        model.objects.bulk_create(chunk)
        count += len(chunk)
    return count
