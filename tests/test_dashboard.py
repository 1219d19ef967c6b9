"""The usage dashboards: a team's (admins only) and the site's (staff only). Seeded records
on known days give known figures: totals, by day, by member, by model, top conversations,
error rate, latency percentiles, budget used, and the same figures in the CSV exports."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from assistant.services import conversation_create
from tests.conftest import _user
from tests.usage_helpers import clear_budget_totals, seed
from usage import dashboard
from usage.dashboard import DateRange, parse_range

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_totals():
    clear_budget_totals()
    yield
    clear_budget_totals()


def today() -> date:
    return timezone.now().date()


@pytest.fixture
def seeded(team, alice, bob, conversation, other_team, charlie):
    """Two days ago: alice and bob on gpt-4o. Yesterday: alice on llama fails once, runs a
    command. Today: bob again. 40 days ago (outside 30 days): alice. Another team: charlie."""
    d = today()
    other_conversation = conversation_create(team=team, author=bob, title="Second thread")
    seed(
        team=team,
        user=alice,
        conversation=conversation,
        day=d - timedelta(days=2),
        prompt=100,
        completion=50,
        cost="0.001",
        latency=100,
    )
    seed(
        team=team,
        user=bob,
        conversation=other_conversation,
        day=d - timedelta(days=2),
        prompt=200,
        completion=100,
        cost="0.002",
        latency=300,
    )
    seed(
        team=team,
        user=alice,
        conversation=conversation,
        day=d - timedelta(days=1),
        model="ollama_chat/llama3.1",
        prompt=1000,
        latency=50,
        outcome="rate_limited",
    )
    seed(
        team=team,
        user=alice,
        conversation=conversation,
        day=d - timedelta(days=1),
        model="run_command",
        kind="tool",
        sandbox_ms=1500,
    )
    seed(
        team=team,
        user=bob,
        conversation=other_conversation,
        day=d,
        prompt=10,
        completion=10,
        cost="0.0005",
        latency=400,
    )
    seed(
        team=team,
        user=alice,
        conversation=conversation,
        day=d - timedelta(days=40),
        prompt=999,
        cost="9",
        latency=5,
    )
    seed(team=other_team, user=charlie, day=d, prompt=7, completion=3, cost="0.1", latency=200)
    return {"conversation": conversation, "other": other_conversation}  # fmt: skip


def last(days: int) -> DateRange:
    return parse_range({"days": str(days)})


def test_a_teams_figures(team, alice, bob, seeded):
    report = dashboard.team_report(team, last(30))
    t = report.totals
    assert (t.calls, t.errors, t.tool_calls, t.sandbox_ms) == (4, 1, 1, 1500)
    assert (t.prompt_tokens, t.completion_tokens, t.tokens) == (1310, 160, 1470)
    assert t.cost_usd == Decimal("0.0035")
    assert t.error_rate == 25.0
    assert len(report.by_day) == 30 and report.by_day[-1].key == today()
    by_day = {row.key: (row.calls, row.tokens, row.cost_usd) for row in report.by_day}
    assert by_day[today() - timedelta(days=2)] == (2, 450, Decimal("0.003"))
    assert by_day[today() - timedelta(days=1)] == (1, 1000, Decimal(0))
    assert by_day[today()] == (1, 20, Decimal("0.0005"))
    assert sum(row.calls for row in report.by_day) == 4
    members = {
        row.label: (row.calls, row.tokens, row.cost_usd, row.tool_calls) for row in report.by_member
    }  # noqa: E501
    assert members == {
        "alice": (2, 1150, Decimal("0.001"), 1),
        "bob": (2, 320, Decimal("0.0025"), 0),
    }
    assert [row.label for row in report.by_member] == ["bob", "alice"]  # by cost
    models = {row.label: (row.calls, row.errors, row.tokens) for row in report.by_model}
    assert models == {"openai/gpt-4o": (3, 0, 470), "ollama_chat/llama3.1": (1, 1, 1000)}
    assert [(r.label, r.tool_calls, r.sandbox_seconds) for r in report.by_tool] == [
        ("run_command", 1, 1.5)
    ]
    top = [(row.label, row.calls, row.tokens, row.cost_usd) for row in report.top_conversations]
    assert top == [
        ("Second thread", 2, 320, Decimal("0.0025")),
        ("Refactor the parser", 2, 1150, Decimal("0.001")),
    ]
    # percentile_cont over the answered calls' latencies 100, 300, 400.
    assert (report.p50_ms, report.p95_ms) == (300, 390)


def test_a_shorter_range_and_an_explicit_one(team, seeded):
    week = dashboard.team_report(team, last(7))
    assert len(week.by_day) == 7 and week.totals.calls == 4
    two_days = dashboard.team_report(
        team,
        parse_range(
            {"from": str(today() - timedelta(days=2)), "to": str(today() - timedelta(days=1))}
        ),  # noqa: E501
    )
    assert (two_days.totals.calls, two_days.totals.tokens) == (3, 1450)
    assert (two_days.p50_ms, two_days.p95_ms) == (200, 290)
    ninety = dashboard.team_report(team, last(90))
    assert ninety.totals.calls == 5 and ninety.totals.cost_usd == Decimal("9.0035")


def test_the_sites_figures(team, other_team, seeded):
    report = dashboard.site_report(last(30))
    assert report.totals.calls == 5 and report.totals.cost_usd == Decimal("0.1035")
    teams = {row.label: (row.calls, row.tokens, row.cost_usd) for row in report.by_team}
    assert teams == {"Acme": (4, 1470, Decimal("0.0035")), "Other": (1, 10, Decimal("0.1"))}
    assert report.by_team[0].label == "Other"  # by cost
    assert {row.label for row in report.by_member} == {"alice", "bob", "charlie"}
    # The site's percentiles come from the 1% histogram: 100, 200, 300, 400 ms.
    assert report.p50_ms == pytest.approx(250, rel=0.005)
    assert report.p95_ms == pytest.approx(385, rel=0.005)


def test_histogram_percentiles_stay_within_half_a_percent():
    import random

    from usage.rollups import latency_bucket

    rng = random.Random(7)
    values = sorted(int(rng.lognormvariate(7.5, 0.8)) + 1 for _ in range(20_000))
    counts: dict[int, int] = {}
    for value in values:
        counts[latency_bucket(value)] = counts.get(latency_bucket(value), 0) + 1
    buckets = sorted(counts.items())
    for p in (0.5, 0.95, 0.99):
        exact = dashboard.percentile(values, p)
        assert dashboard.histogram_percentile(buckets, p) == pytest.approx(exact, rel=0.005)


def test_budget_used_is_this_months_spending(team, alice, seeded):
    team.monthly_budget_usd = Decimal("0.01")
    team.member_daily_tokens = 1000
    team.save()
    budget = dashboard.team_budget(team)
    month = sum(
        Decimal(c)
        for c, day in (
            ("0.001", today() - timedelta(days=2)),
            ("0.002", today() - timedelta(days=2)),
            ("0.0005", today()),
        )
        if day.month == today().month
    )
    assert budget.spent_usd == month
    assert budget.percent == pytest.approx(float(month / Decimal("0.01") * 100))
    assert (budget.top_member, budget.top_member_tokens_today) == ("bob", 20)


# --- Pages ----------------------------------------------------------------------------------


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_team_page_shows_the_figures_and_its_range(team, alice, seeded):
    page = client_for(alice).get("/t/acme/usage/?days=7").content.decode()
    assert 'data-testid="total-calls" data-value="4"' in page
    assert 'data-testid="total-tokens" data-value="1470"' in page
    assert 'data-testid="total-cost" data-value="0.0035"' in page
    assert 'data-testid="p50" data-value="300"' in page
    assert "25.0%" in page  # error rate
    assert 'id="usage-chart-data"' in page and "chart.umd.js" in page
    assert 'class="button primary" data-testid="preset-7"' in page
    assert "Second thread" in page and "run_command" in page


def test_a_range_that_cannot_be_read_falls_back_with_a_note(team, alice):
    page = client_for(alice).get("/t/acme/usage/?from=yesterday&to=2").content.decode()
    assert "could not be read" in page
    long = parse_range({"from": "2020-01-01", "to": "2024-01-01"})
    assert long.days == dashboard.MAX_DAYS and "at most" in long.note
    swapped = parse_range({"from": "2024-02-10", "to": "2024-02-01"})
    assert (swapped.start, swapped.end) == (date(2024, 2, 1), date(2024, 2, 10))


def rows_of(response) -> list[list[str]]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_the_csv_has_the_same_figures(team, alice, bob, seeded):
    admin = client_for(alice)
    days = rows_of(admin.get("/t/acme/usage/export.csv?days=30"))
    assert days[0][:7] == [
        "date",
        "llm_calls",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "tokens",
        "cost_usd",
    ]  # noqa: E501
    assert len(days) == 31
    by_date = {row[0]: row for row in days[1:]}
    assert by_date[str(today() - timedelta(days=2))][1:7] == [
        "2",
        "0",
        "300",
        "150",
        "450",
        "0.003000",
    ]  # noqa: E501
    assert by_date[str(today() - timedelta(days=1))][-2:] == ["1", "1.500"]
    members = rows_of(admin.get("/t/acme/usage/export.csv?days=30&table=member"))
    assert [(r[0], r[1], r[6], r[7]) for r in members[1:]] == [
        ("bob", "bob@example.com", "320", "0.002500"),
        ("alice", "alice@example.com", "1150", "0.001000"),
    ]
    models = rows_of(admin.get("/t/acme/usage/export.csv?days=30&table=model"))
    assert {r[0] for r in models[1:]} == {"openai/gpt-4o", "ollama_chat/llama3.1"}
    conversations = rows_of(admin.get("/t/acme/usage/export.csv?days=30&table=conversation"))
    assert [r[0] for r in conversations[1:]] == ["Second thread", "Refactor the parser"]


def test_csv_cells_that_look_like_formulas_stay_text(team, alice, conversation):
    conversation.title = '=HYPERLINK("http://evil")'
    conversation.save()
    seed(team=team, user=alice, conversation=conversation, day=today(), prompt=1)
    rows = rows_of(client_for(alice).get("/t/acme/usage/export.csv?table=conversation"))
    assert rows[1][0] == '\'=HYPERLINK("http://evil")'


def test_staff_see_every_team(django_user_model, seeded):
    staff = _user(django_user_model, "erin@example.com")
    staff.is_staff = True
    staff.save()
    page = client_for(staff).get("/staff/usage/?days=30").content.decode()
    assert 'data-testid="by-team"' in page and "Other" in page and "Acme" in page
    assert 'data-testid="total-calls" data-value="5"' in page
    teams = rows_of(client_for(staff).get("/staff/usage/export.csv?days=30&table=team"))
    assert [r[0] for r in teams[1:]] == ["other", "acme"]


def test_only_admins_and_staff_get_in(team, alice, bob, charlie, django_user_model):
    assert client_for(alice).get("/t/acme/usage/").status_code == 200
    assert client_for(bob).get("/t/acme/usage/").status_code == 404
    assert client_for(bob).get("/t/acme/usage/export.csv").status_code == 404
    assert client_for(charlie).get("/t/acme/usage/").status_code == 404
    assert client_for(alice).get("/staff/usage/").status_code == 404
    assert client_for(alice).get("/staff/usage/export.csv").status_code == 404
    assert Client().get("/staff/usage/").status_code == 302


def test_the_nav_links(team, alice, bob, django_user_model):
    assert "/t/acme/usage/" in client_for(alice).get("/t/acme/").content.decode()
    member_page = client_for(bob).get("/t/acme/").content.decode()
    assert "/t/acme/usage/" not in member_page and "/staff/usage/" not in member_page
    bob.is_staff = True
    bob.save()
    assert "/staff/usage/" in client_for(bob).get("/t/acme/").content.decode()


def test_the_django_admin_lists_usage_read_only_and_api_keys(django_user_model, seeded):
    root = django_user_model.objects.create_superuser("root@example.com", "pw-root-12345")
    admin = client_for(root)
    for url in (
        "/admin/accounts/user/",
        "/admin/accounts/team/",
        "/admin/api/apikey/",
        "/admin/usage/modelprice/",
        "/admin/usage/usagerecord/",
    ):
        assert admin.get(url).status_code == 200, url
    page = admin.get("/admin/usage/usagerecord/").content.decode()
    assert "openai/gpt-4o" in page and "run_command" in page
    assert admin.get("/admin/usage/usagerecord/add/").status_code == 403
    from usage.models import UsageRecord

    record = UsageRecord.objects.first()
    change = admin.post(f"/admin/usage/usagerecord/{record.pk}/change/", {"model": "x"})
    assert change.status_code == 403
    record.refresh_from_db()
    assert record.model != "x"
