"""Usage metering: every model call is priced (litellm's price map, or the team's own price)
and recorded with its provider, kind and API key; every tool execution is counted with its
sandbox time; the daily rollups stay equal to a rebuild from the records."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.test import Client

from assistant import llm, repos, sandbox, services
from assistant.models import Repository, RunStatus, ToolCall
from assistant.runner import run_on_worker_loop
from tests import usage_helpers
from tests.usage_helpers import clear_budget_totals
from usage import pricing, rollups
from usage.models import (
    DailyConversationUsage,
    DailyLatency,
    DailyMemberUsage,
    DailyUsage,
    ModelPrice,
    UsageRecord,
)

GPT4O_INPUT = Decimal("0.0000025")  # litellm's map: $2.50 per 1M input tokens
GPT4O_OUTPUT = Decimal("0.00001")  # $10 per 1M output tokens


git_origin = usage_helpers.origin  # a fixture: a small git repository


@pytest.fixture(autouse=True)
def clean_totals():
    clear_budget_totals()
    yield
    clear_budget_totals()


def fake_provider_team(team, settings, port: int, model: str) -> None:
    """Point the team at the scripted fake provider under another model's name: it answers
    any name, so the price of a real model can be checked end to end."""
    settings.LLM_MAX_RETRIES = 0
    team.llm_model = model
    team.llm_api_base = f"http://127.0.0.1:{port}/v1"
    team.llm_api_key = "test-key"
    team.save()


def execute(run, timeout: float = 60):
    run_on_worker_loop(str(run.uuid)).result(timeout)
    run.refresh_from_db()
    return run


# --- Prices -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_reply_is_priced_from_litellms_map(
    team, conversation, alice, settings, provider_port, no_runs
):
    fake_provider_team(team, settings, provider_port, "openai/gpt-4o")
    run = services.message_send(conversation=conversation, author=alice, content="Hello there")
    run = execute(run.run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    record = UsageRecord.objects.get(run=run)
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    expected = GPT4O_INPUT * record.prompt_tokens + GPT4O_OUTPUT * record.completion_tokens
    assert record.cost_usd == expected
    assert (record.provider, record.kind, record.model) == ("openai", "llm", "openai/gpt-4o")
    assert (record.user, record.conversation, record.api_key) == (alice, conversation, None)
    day = DailyUsage.objects.get(team=team)
    assert (day.calls, day.cost_usd, day.model) == (1, expected, "openai/gpt-4o")
    member = DailyMemberUsage.objects.get(team=team)
    assert (member.user_id, member.calls, member.cost_usd) == (alice.pk, 1, expected)


def usage(prompt: int, completion: int) -> llm.Usage:
    return llm.Usage(prompt_tokens=prompt, completion_tokens=completion, latency_ms=120)


@pytest.mark.django_db
def test_unknown_models_cost_nothing_until_an_admin_prices_them(team, conversation, alice, no_runs):
    run = services.message_send(conversation=conversation, author=alice, content="hi").run
    services.usage_record(
        run=run, model="ollama_chat/llama3.1", usage=usage(1000, 500), outcome="ok"
    )
    assert UsageRecord.objects.get().cost_usd == 0

    admin = Client()
    admin.force_login(alice)
    response = admin.post(
        "/t/acme/usage/prices/",
        {
            "model": "ollama_chat/llama3.1",
            "input_usd_per_mtok": "0.40",
            "output_usd_per_mtok": "1.60",
        },
    )
    assert response.status_code == 302
    services.usage_record(
        run=run, model="ollama_chat/llama3.1", usage=usage(1000, 500), outcome="ok"
    )
    priced = UsageRecord.objects.order_by("-id").first()
    # 1000 × $0.40/1M + 500 × $1.60/1M
    assert priced.cost_usd == Decimal("0.0004") + Decimal("0.0008")
    assert priced.provider == "ollama_chat"
    page = admin.get("/t/acme/usage/").content.decode()
    assert "ollama_chat/llama3.1" in page and "$0.4000" in page


@pytest.mark.django_db
def test_a_teams_price_wins_over_the_map(team, conversation, alice, no_runs):
    ModelPrice.objects.create(
        team=team, model="openai/gpt-4o", input_usd_per_mtok=1, output_usd_per_mtok=2
    )
    run = services.message_send(conversation=conversation, author=alice, content="hi").run
    services.usage_record(run=run, model="openai/gpt-4o", usage=usage(1_000_000, 0), outcome="ok")
    assert UsageRecord.objects.get().cost_usd == Decimal(1)
    # Another team still pays the map's price.
    assert pricing.price_for(team.pk + 1000, "openai/gpt-4o").input == GPT4O_INPUT


@pytest.mark.django_db
def test_a_teams_prices_are_kept_and_a_change_applies_from_the_next_call_on(
    team, alice, django_assert_num_queries, django_capture_on_commit_callbacks
):
    """Each process keeps the prices it read, under the team's prices token: a price saved or
    removed (here, through the page) replaces the token once committed, so no process —
    this one, or a worker that only sees the token change — prices with the old one."""
    model = "ollama_chat/kept"
    ModelPrice.objects.create(team=team, model=model, input_usd_per_mtok=1, output_usd_per_mtok=2)
    assert pricing.price_for(team.pk, model).input == Decimal("0.000001")
    with django_assert_num_queries(0):  # kept
        assert pricing.price_for(team.pk, model).output == Decimal("0.000002")
    admin = Client()
    admin.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(
            "/t/acme/usage/prices/",
            {"model": model, "input_usd_per_mtok": "3", "output_usd_per_mtok": "4"},
        )
    assert pricing.price_for(team.pk, model).input == Decimal("0.000003")
    # Another process's change: only the shared token tells this one (the row is changed
    # behind this process's back, as another process's save would be).
    ModelPrice.objects.filter(team=team, model=model).update(input_usd_per_mtok=5)
    assert pricing.price_for(team.pk, model).input == Decimal("0.000003")  # kept: no news
    token_key = pricing.PRICES_TOKEN_KEY.format(team.pk)
    from assistant.streams import sync_redis

    sync_redis().set(token_key, "another-process-saved-a-price")
    assert pricing.price_for(team.pk, model).input == Decimal("0.000005")
    with django_capture_on_commit_callbacks(execute=True):
        admin.post("/t/acme/usage/prices/", {"delete": model})
    assert pricing.price_for(team.pk, model).source == "litellm"  # back to the map's


@pytest.mark.django_db
def test_embedded_mode_keeps_prices_under_a_token_of_its_own(
    team, settings, django_assert_num_queries
):
    settings.REDIS_URL = ""  # one process does everything: its token lives in memory
    model = "x/embedded"
    assert pricing.price_for(team.pk, model).source == "unknown"
    with django_assert_num_queries(0):
        pricing.price_for(team.pk, model)
    ModelPrice.objects.create(team=team, model=model, input_usd_per_mtok=1, output_usd_per_mtok=1)
    assert pricing.price_for(team.pk, model).source == "team"


@pytest.mark.django_db
def test_members_cannot_set_prices(team, bob):
    member = Client()
    member.force_login(bob)
    response = member.post(
        "/t/acme/usage/prices/",
        {"model": "x/y", "input_usd_per_mtok": "1", "output_usd_per_mtok": "1"},
    )
    assert response.status_code == 404
    assert not ModelPrice.objects.exists()


@pytest.mark.django_db
def test_an_admin_removes_a_price(team, alice):
    ModelPrice.objects.create(team=team, model="x/y", input_usd_per_mtok=1, output_usd_per_mtok=1)
    admin = Client()
    admin.force_login(alice)
    assert admin.post("/t/acme/usage/prices/", {"delete": "x/y"}).status_code == 302
    assert not ModelPrice.objects.exists()


def test_the_provider_is_the_model_names_prefix_or_litellms_guess():
    assert pricing.provider_of("anthropic/claude-sonnet-4-5") == "anthropic"
    assert pricing.provider_of("gpt-4o") == "openai"
    assert pricing.provider_of("no-such-thing-xyz") == ""


@pytest.mark.django_db
def test_the_api_key_of_a_message_goes_to_its_run_and_usage(team, conversation, alice, no_runs):
    from api.models import ApiKey

    key = ApiKey.objects.create(
        team=team, user=alice, prefix="tdm_test", key_hash=hashlib.sha256(b"k").hexdigest()
    )
    run = services.message_send(
        conversation=conversation, author=alice, content="hi", api_key=key
    ).run
    run.refresh_from_db()
    assert run.api_key == key
    services.usage_record(run=run, model="openai/gpt-4o", usage=usage(10, 10), outcome="ok")
    assert UsageRecord.objects.get().api_key == key


# --- Tool executions ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed")
def test_tool_executions_are_counted_with_their_sandbox_time(
    team, conversation, alice, settings, provider_port, git_origin, no_runs
):
    settings.REPOS_ROOT = git_origin.parent / "repos"
    fake_provider_team(team, settings, provider_port, "openai/fake-model")
    repo = Repository.objects.create(team=team, name="app", url=str(git_origin))
    repos.create_workspace(conversation=conversation, repo=repo)
    script = "".join(
        f"[[tool {name} {json.dumps(args)}]]"
        for name, args in (
            ("read_file", {"path": "app.py"}),
            ("run_command", {"command": "python3 app.py"}),
        )
    )
    team.command_allowlist = "python3"
    team.save(update_fields=["command_allowlist"])
    run = execute(
        services.message_send(conversation=conversation, author=alice, content=script).run
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    calls = list(ToolCall.objects.filter(run=run).order_by("step", "index"))
    assert [c.name for c in calls] == ["read_file", "run_command"]
    tools = list(UsageRecord.objects.filter(run=run, kind="tool").order_by("id"))
    assert [t.model for t in tools] == ["read_file", "run_command"]
    assert [t.sandbox_ms for t in tools] == [c.duration_ms for c in calls]
    assert all(t.tool_calls == 1 and t.provider == "sandbox" for t in tools)
    assert all(t.prompt_tokens == t.completion_tokens == 0 and t.cost_usd == 0 for t in tools)
    assert UsageRecord.objects.filter(run=run, kind="llm").count() == 3
    tool_days = DailyUsage.objects.filter(team=team, kind="tool")
    assert sum(d.tool_calls for d in tool_days) == 2
    assert sum(d.sandbox_ms for d in tool_days) == sum(c.duration_ms for c in calls)


# --- Rollups ----------------------------------------------------------------------------------


def _snapshot():
    return (
        sorted(
            DailyUsage.objects.values_list(
                "team_id", "day", "model", "kind", "calls", "errors",
                "prompt_tokens", "completion_tokens", "cost_usd", "tool_calls", "sandbox_ms",
                "latency_ms_sum",
            )
        ),
        sorted(
            DailyMemberUsage.objects.values_list(
                "team_id", "day", "user_id", "calls", "errors", "prompt_tokens",
                "completion_tokens", "cost_usd", "tool_calls", "sandbox_ms",
            )
        ),
        sorted(
            DailyConversationUsage.objects.values_list(
                "team_id", "day", "conversation_id", "calls", "tokens", "cost_usd", "tool_calls"
            )
        ),
        sorted(DailyLatency.objects.values_list("day", "bucket", "calls")),
    )  # fmt: skip


@pytest.mark.django_db
def test_the_rollups_kept_per_record_equal_a_rebuild(team, conversation, alice, bob, no_runs):
    run = services.message_send(conversation=conversation, author=alice, content="hi").run
    other = services.message_send(conversation=conversation, author=bob, content="hi").run
    for r, model, (p, c), outcome, ms in (
        (run, "openai/gpt-4o", (100, 20), "ok", 900),
        (run, "openai/gpt-4o", (300, 0), "rate_limited", 15),
        (other, "openai/gpt-4o", (50, 50), "ok", 1300),
        (other, "anthropic/claude-sonnet-4-5", (10, 5), "cancelled", 40),
    ):
        services.usage_record(
            run=r,
            model=model,
            usage=llm.Usage(prompt_tokens=p, completion_tokens=c, latency_ms=ms),
            outcome=outcome,
        )
    call = ToolCall.objects.create(run=run, step=1, index=0, call_id="c", name="grep")
    services.usage_record_tool(run=run, call=call, duration_ms=250)
    kept = _snapshot()
    assert len(kept[0]) == 3  # gpt-4o, claude, grep
    assert len(kept[1]) == 2  # alice, bob
    assert rollups.rebuild() == sum(len(part) for part in kept)
    assert _snapshot() == kept
    gpt = DailyUsage.objects.get(model="openai/gpt-4o")
    assert (gpt.calls, gpt.errors, gpt.prompt_tokens, gpt.latency_ms_sum) == (3, 1, 450, 2215)
    # Stopped is no error.
    assert DailyUsage.objects.get(model="anthropic/claude-sonnet-4-5").errors == 0
    by_alice = DailyMemberUsage.objects.get(user_id=alice.pk)
    assert (by_alice.calls, by_alice.errors, by_alice.tool_calls, by_alice.sandbox_ms) == (
        2,
        1,
        1,
        250,
    )
