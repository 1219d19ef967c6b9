"""Shared by the usage, budget and dashboard tests: seeding usage records on given days, and
clearing the budget totals this test process keeps in Redis."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import pytest

from usage import rollups
from usage.models import UsageRecord


def at(day: date, hour: int = 12) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


def seed(
    *,
    team,
    user=None,
    conversation=None,
    day: date,
    model: str = "openai/gpt-4o",
    prompt: int = 0,
    completion: int = 0,
    cost: str | Decimal = "0",
    latency: int = 0,
    outcome: str = "ok",
    kind: str = "llm",
    sandbox_ms: int = 0,
) -> UsageRecord:
    """A usage record as metering would write it, on ``day``: added to the rollups and, for
    today, to the budget totals."""
    record = UsageRecord.objects.create(
        team=team,
        user=user,
        conversation=conversation,
        model=model,
        provider=model.split("/", 1)[0] if kind == "llm" else "sandbox",
        kind=kind,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=Decimal(cost),
        latency_ms=latency,
        outcome=outcome,
        tool_calls=1 if kind == "tool" else 0,
        sandbox_ms=sandbox_ms,
        created=at(day),
    )
    rollups.add(record)
    if kind == "llm" and day == datetime.now(UTC).date():
        # As metering does after each call: the Redis totals that exist take it in.
        from usage import budgets

        budgets.settle_for(
            team_id=team.pk,
            user_id=user.pk if user else None,
            hold_id=f"seed-{record.pk}",
            cost_usd=record.cost_usd,
            tokens=prompt + completion,
        )
    return record


def clear_budget_totals() -> None:
    from usage import budgets

    budgets.reset_store()
    store = budgets.store()
    client = getattr(store, "client", None)
    if client is not None:
        keys = list(client.scan_iter(match="tandem:budget:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def origin() -> Path:
    """A one-file git repository for a conversation's workspace."""
    # Not under pytest's tmp_path (0700): as root the sandbox runs as nobody.
    parent = Path(tempfile.mkdtemp(prefix="tandem-usage-test-"))
    parent.chmod(0o711)
    path = parent / "origin"
    path.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "O",
        "GIT_AUTHOR_EMAIL": "o@example.com",
        "GIT_COMMITTER_NAME": "O",
        "GIT_COMMITTER_EMAIL": "o@example.com",
    }
    (path / "app.py").write_text("print('hi')\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    yield path
    shutil.rmtree(parent, ignore_errors=True)
