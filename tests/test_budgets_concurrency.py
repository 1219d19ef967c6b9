"""The budget holds across processes: several OS processes (as many web and worker processes
would) reserve model calls against one team's totals in the real Redis, all at once, through
usage.budgets — the same functions the web views and the agent call, reading the limits and
the price from the database. The total never passes the limit by more than one call.

Each reservation is of exactly what the call then costs ($0.01, 10 tokens), so the test can
say how many calls fit: 300 under a $3.00 budget, 150 under 1,500 tokens a day."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from tests.usage_helpers import clear_budget_totals
from usage import budgets
from usage.models import ModelPrice

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 6
COST = Decimal("0.01")  # 10 completion tokens at $1,000 per 1M
TOKENS = 10

WORKER = """
import json, os, random, sys, time, uuid
from decimal import Decimal
import django
django.setup()
from usage import budgets

team_id, user_id, barrier, count = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
redis = budgets.store().client
redis.incr(barrier)  # ready; all start together once every process is
while int(redis.get(barrier)) < count:
    time.sleep(0.0005)
admitted, refused = 0, 0
while refused < 3:  # a few refusals in a row: the limit is reached for good
    hold = uuid.uuid4().hex
    try:
        budgets.reserve_for(team_id=team_id, user_id=user_id, hold_id=hold, model="test/flat")
    except budgets.BudgetExceeded:
        refused += 1
        continue
    admitted += 1
    time.sleep(random.uniform(0, 0.003))  # the call in flight, its estimate held
    budgets.settle_for(
        team_id=team_id, user_id=user_id, hold_id=hold, cost_usd=Decimal("0.01"), tokens=10
    )
print(json.dumps({"admitted": admitted, "pid": os.getpid()}))
"""

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def clean_totals():
    clear_budget_totals()
    yield
    clear_budget_totals()


def run_workers(team, user) -> list[int]:
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        # The estimate held per call is then exactly its cost (no prompt, 10 tokens out).
        "BUDGET_RESERVE_COMPLETION_TOKENS": str(TOKENS),
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    barrier = f"tandem:budget:test-barrier:{uuid.uuid4().hex}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(team.pk), str(user.pk), barrier, str(PROCESSES)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    counts = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        counts.append(json.loads(out.strip().splitlines()[-1])["admitted"])
    print(f"admitted per process: {counts}")
    return counts


def flat_price(team) -> None:
    ModelPrice.objects.create(
        team=team, model="test/flat", input_usd_per_mtok=0, output_usd_per_mtok=1000
    )


def test_a_monthly_budget_is_never_overshot_by_more_than_one_call(team, alice):
    flat_price(team)
    team.monthly_budget_usd = Decimal("3.00")
    team.save(update_fields=["monthly_budget_usd"])
    counts = run_workers(team, alice)
    status = budgets.status(team.pk, alice.pk)
    spent = status.spent_usd
    assert spent == COST * sum(counts)  # every hold was settled, nothing lost or doubled
    assert Decimal("3.00") <= spent <= Decimal("3.00") + COST  # at most one call over
    assert sum(counts) == 300  # exact estimates: it fills the budget exactly
    assert sum(1 for c in counts if c) >= 2, counts  # the processes really did compete


def test_a_members_daily_tokens_are_never_overshot_by_more_than_one_call(team, alice):
    flat_price(team)
    team.member_daily_tokens = 1500
    team.save(update_fields=["member_daily_tokens"])
    counts = run_workers(team, alice)
    used = budgets.status(team.pk, alice.pk).tokens_today
    assert used == TOKENS * sum(counts)
    assert 1500 <= used <= 1500 + TOKENS
    assert sum(counts) == 150
    assert sum(1 for c in counts if c) >= 2, counts
