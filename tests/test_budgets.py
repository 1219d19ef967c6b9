"""Budgets: a team's monthly budget and each member's daily tokens. From 80% members see a
warning (a banner in the conversation, a note by the composer); at 100% a message is refused
in words before anything is asked of the model, and a run already going stops before its next
model call. The totals live in Redis, seeded from the database."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from assistant import llm, repos, sandbox, services
from assistant.models import Message, Repository, Run, RunStatus, ToolCall
from assistant.runner import run_on_worker_loop
from tests import usage_helpers
from tests.usage_helpers import clear_budget_totals, seed
from usage import budgets
from usage.models import ModelPrice, UsageRecord

git_origin = usage_helpers.origin  # a fixture: a small git repository


@pytest.fixture(autouse=True)
def clean_totals():
    clear_budget_totals()
    yield
    clear_budget_totals()


@pytest.fixture
def provider_calls(monkeypatch) -> list:
    """Every call the agent makes to the model provider (the real call still happens)."""
    calls: list = []
    real = llm.stream_chat

    def counting(config, messages, tools=None):
        calls.append(config.model)
        return real(config, messages, tools=tools)

    monkeypatch.setattr(llm, "stream_chat", counting)
    return calls


def today():
    return timezone.now().date()


def set_limits(team, budget=None, tokens=None) -> None:
    team.monthly_budget_usd = Decimal(budget) if budget is not None else None
    team.member_daily_tokens = tokens
    team.save(update_fields=["monthly_budget_usd", "member_daily_tokens"])


def page_of(user, url: str) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def post_message(user, conversation, content: str = "hello"):
    client = Client()
    client.force_login(user)
    return client.post(
        f"/t/{conversation.team.slug}/c/{conversation.uuid}/messages/", {"content": content}
    )


# --- Warnings ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_at_80_percent_members_see_a_banner_and_a_note(team, conversation, alice, bob, no_runs):
    set_limits(team, budget="10.00")
    seed(team=team, user=alice, day=today(), cost="8.50", prompt=1000)
    url = f"/t/acme/c/{conversation.uuid}/"
    page = page_of(bob, url)
    assert 'data-level="warning"' in page
    assert "This team has used 85% of its monthly budget ($8.50 of $10.00" in page
    assert "85% of this month&#x27;s budget used." in page  # the note by the composer
    # Sending still works, and the banner comes back (with the note, out of band) after it.
    assert post_message(bob, conversation).status_code == 201
    banner = page_of(bob, "/t/acme/usage/banner/")
    assert 'id="budget-banner"' in banner and 'hx-swap-oob="true"' in banner
    assert "85%" in banner


@pytest.mark.django_db
def test_below_80_percent_there_is_no_banner(team, conversation, alice, bob, no_runs):
    set_limits(team, budget="10.00", tokens=10_000)
    seed(team=team, user=bob, day=today(), cost="7.00", prompt=7000)
    page = page_of(bob, f"/t/acme/c/{conversation.uuid}/")
    assert 'data-level="ok"' in page and "monthly budget" not in page


@pytest.mark.django_db
def test_the_daily_token_warning_is_per_member(team, conversation, alice, bob, no_runs):
    set_limits(team, tokens=1000)
    seed(team=team, user=bob, day=today(), prompt=700, completion=200)
    assert "You have used 90% of your 1,000 tokens for today" in page_of(
        bob, f"/t/acme/c/{conversation.uuid}/"
    )
    assert 'data-level="ok"' in page_of(alice, f"/t/acme/c/{conversation.uuid}/")


# --- Refusal before any model call ------------------------------------------------------------


@pytest.mark.django_db
def test_at_100_percent_a_message_is_refused_in_words(
    team, conversation, alice, bob, no_runs, provider_calls
):
    set_limits(team, budget="5.00")
    seed(team=team, user=alice, day=today(), cost="5.00")
    response = post_message(bob, conversation, "please answer")
    assert response.status_code == 422
    body = response.content.decode()
    assert "This team has used its monthly budget of $5.00" in body
    assert "A team admin can raise the budget" in body
    with pytest.raises(budgets.BudgetExceeded) as caught:
        services.message_send(conversation=conversation, author=bob, content="again")
    assert isinstance(caught.value, services.ChatError)  # the API maps it to 429
    assert not Message.objects.filter(conversation=conversation).exists()
    assert not Run.objects.exists() and no_runs == []
    assert provider_calls == []
    page = page_of(bob, f"/t/acme/c/{conversation.uuid}/")
    assert 'data-level="exhausted"' in page and "Limit reached" in page


@pytest.mark.django_db
def test_a_member_over_the_daily_tokens_is_refused_but_not_the_others(
    team, conversation, alice, bob, no_runs
):
    set_limits(team, tokens=500)
    seed(team=team, user=bob, day=today(), prompt=400, completion=100)
    seed(team=team, user=bob, day=today() - timedelta(days=1), prompt=9000)  # yesterday's
    response = post_message(bob, conversation)
    assert response.status_code == 422
    assert "You have used your 500 tokens for today (500 so far)" in response.content.decode()
    assert post_message(alice, conversation).status_code == 201


@pytest.mark.django_db
def test_last_months_spending_does_not_count(team, conversation, alice, no_runs):
    set_limits(team, budget="1.00")
    first = today().replace(day=1)
    seed(team=team, user=alice, day=first - timedelta(days=1), cost="50")
    assert post_message(alice, conversation).status_code == 201


@pytest.mark.django_db
def test_raising_the_budget_lets_messages_through_again(team, conversation, alice, no_runs):
    set_limits(team, budget="1.00")
    seed(team=team, user=alice, day=today(), cost="1.00")
    assert post_message(alice, conversation).status_code == 422
    admin = Client()
    admin.force_login(alice)
    saved = admin.post("/t/acme/usage/budget/", {"monthly_budget_usd": "2.00"})
    assert saved.status_code == 302
    team.refresh_from_db()
    assert team.monthly_budget_usd == Decimal("2.00") and team.member_daily_tokens is None
    assert post_message(alice, conversation).status_code == 201


@pytest.mark.django_db
def test_members_cannot_change_the_limits(team, bob):
    member = Client()
    member.force_login(bob)
    assert member.post("/t/acme/usage/budget/", {"monthly_budget_usd": "99"}).status_code == 404
    team.refresh_from_db()
    assert team.monthly_budget_usd is None


# --- In the agent loop: checked before every model call ----------------------------------------


@pytest.fixture
def fake_model(team, settings, provider_port):
    settings.LLM_MAX_RETRIES = 0
    team.llm_model = "openai/fake-model"
    team.llm_api_base = f"http://127.0.0.1:{provider_port}/v1"
    team.llm_api_key = "test-key"
    team.save()


def execute(run):
    run_on_worker_loop(str(run.uuid)).result(60)
    run.refresh_from_db()
    return run


@pytest.mark.django_db(transaction=True)
def test_a_run_stops_before_its_model_call_when_the_budget_ran_out_meanwhile(
    team, conversation, alice, bob, fake_model, no_runs, provider_calls
):
    set_limits(team, budget="1.00")
    run = services.message_send(conversation=conversation, author=bob, content="hello").run
    # Another run spends the rest while this one waits in the queue.
    seed(team=team, user=alice, day=today(), cost="1.00")
    run = execute(run)
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("The assistant stopped: This team has used its monthly budget")
    assert provider_calls == []
    assert not UsageRecord.objects.filter(run=run).exists()
    assert run.steps == 0


@pytest.mark.django_db(transaction=True)
def test_a_long_run_stops_at_the_model_call_after_the_budget_is_spent(
    team, conversation, alice, fake_model, no_runs, provider_calls, settings
):
    """Each model call holds an estimate before it starts and is settled after; the call that
    crosses the limit completes, and the next one is never made."""
    settings.BUDGET_RESERVE_COMPLETION_TOKENS = 10
    ModelPrice.objects.create(
        team=team, model="openai/fake-model", input_usd_per_mtok=0, output_usd_per_mtok=10_000
    )  # $0.01 a completion token
    set_limits(team, budget="0.50")
    # 30 tokens a call = $0.30: the first call is admitted (0 < 0.50), the second too
    # (0.30 < 0.50), the third is refused (0.60 >= 0.50).
    first = services.message_send(
        conversation=conversation, author=alice, content="[[tokens=30]] one"
    ).run
    assert execute(first).status == RunStatus.SUCCEEDED
    second = execute(
        services.message_send(
            conversation=conversation, author=alice, content="[[tokens=30]] two"
        ).run
    )
    assert second.status == RunStatus.SUCCEEDED
    assert len(provider_calls) == 2
    status = budgets.status(team.pk, alice.pk)
    assert status.spent_usd == Decimal("0.60") and status.exhausted
    with pytest.raises(budgets.BudgetExceeded):
        services.message_send(conversation=conversation, author=alice, content="three")
    assert len(provider_calls) == 2


# --- The totals in Redis ----------------------------------------------------------------------


@pytest.mark.django_db
def test_totals_are_seeded_from_the_database_and_kept_by_each_record(
    team, conversation, alice, no_runs
):
    set_limits(team, budget="10.00", tokens=100_000)
    seed(team=team, user=alice, day=today(), cost="1.25", prompt=1000, completion=234)
    status = budgets.status(team.pk, alice.pk)
    assert (status.spent_usd, status.tokens_today) == (Decimal("1.25"), 1234)
    run = services.message_send(conversation=conversation, author=alice, content="hi").run
    budgets.reserve(run=run, model="openai/gpt-4o", messages=[{"content": "x" * 400}])
    held = budgets.status(team.pk, alice.pk)
    # The estimate: 100 prompt tokens at $2.50/1M + 1000 completion tokens at $10/1M.
    assert held.spent_usd == Decimal("1.25") + Decimal("0.01025")
    assert held.tokens_today == 1234 + 1100
    services.usage_record(
        run=run,
        model="openai/gpt-4o",
        usage=llm.Usage(prompt_tokens=100, completion_tokens=10, latency_ms=5),
        outcome="ok",
    )
    settled = budgets.status(team.pk, alice.pk)
    assert settled.spent_usd == Decimal("1.25") + Decimal("0.00035")
    assert settled.tokens_today == 1234 + 110
    # A flushed Redis is seeded again from the rollups, which hold the same.
    clear_budget_totals()
    again = budgets.status(team.pk, alice.pk)
    assert (again.spent_usd, again.tokens_today) == (settled.spent_usd, settled.tokens_today)


@pytest.mark.django_db
def test_a_team_without_limits_never_touches_the_totals(team, conversation, alice, no_runs):
    run = services.message_send(conversation=conversation, author=alice, content="hi").run
    budgets.reserve(run=run, model="openai/gpt-4o", messages=[])
    store = budgets.store()
    assert not list(store.client.scan_iter(match="tandem:budget:*"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed")
def test_an_agent_run_stops_at_its_next_model_call_once_the_budget_is_spent(
    team, conversation, alice, fake_model, git_origin, settings, no_runs, provider_calls
):
    """One turn of several model calls (tools between them): the call that spends the budget
    finishes and its tool runs, but the model is not called again."""
    settings.REPOS_ROOT = git_origin.parent / "repos"
    repo = Repository.objects.create(team=team, name="app", url=str(git_origin))
    repos.create_workspace(conversation=conversation, repo=repo)
    ModelPrice.objects.create(
        team=team, model="openai/fake-model", input_usd_per_mtok=1_000_000, output_usd_per_mtok=0
    )  # $1 a prompt token: the first call alone spends far more than the budget
    set_limits(team, budget="5.00")
    script = '[[tool read_file {"path": "app.py"}]][[tool read_file {"path": "app.py"}]]'
    run = execute(
        services.message_send(conversation=conversation, author=alice, content=script).run
    )
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("The assistant stopped: This team has used its monthly budget")
    assert len(provider_calls) == 1
    assert run.steps == 1
    assert list(UsageRecord.objects.filter(run=run).values_list("kind", flat=True)) == [
        "llm",
        "tool",
    ]
    assert ToolCall.objects.get(run=run).status == "succeeded"
