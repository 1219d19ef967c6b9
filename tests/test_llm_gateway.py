"""Runs through the LLM gateway against the fake provider over real HTTP, in each wire format,
and every way a provider fails: the user's message is kept and the reason is shown in words."""

from __future__ import annotations

import asyncio
import time

import pytest

from assistant import llm, streams
from assistant.agent import execute_run
from assistant.fakellm.script import scripted_tokens
from assistant.models import Message, Role, Run, RunStatus, UsageRecord
from assistant.services import message_send

pytestmark = pytest.mark.django_db(transaction=True)

FORMATS = {
    "openai": ("openai/fake-model", "/v1"),
    "anthropic": ("anthropic/fake-model", ""),
    "ollama": ("ollama_chat/fake-model", ""),
}


CLIENTS = ["direct", "litellm"]


@pytest.fixture(params=CLIENTS)
def stream_client(request, settings):
    """Each behaviour holds for the lean client and for litellm alike."""
    settings.LLM_STREAM_CLIENT = request.param
    return request.param


def use_model(team, port: int, wire: str = "openai", *, key: str = "test-key", model=None):
    name, path = FORMATS[wire]
    team.llm_model = model or name
    team.llm_api_base = f"http://127.0.0.1:{port}{path}"
    team.llm_api_key = key
    team.save()


def run_turn(conversation, author, content: str) -> Run:
    sent = message_send(conversation=conversation, author=author, content=content)
    asyncio.run(execute_run(str(sent.run.uuid)))
    sent.run.refresh_from_db()
    return sent.run


def reply_of(run: Run) -> str:
    message = Message.objects.filter(run=run).first()
    return message.content if message else ""


@pytest.mark.parametrize("wire", list(FORMATS))
def test_it_runs_a_conversation_in_each_wire_format(
    wire, stream_client, provider_port, team, conversation, alice, no_runs
):
    use_model(team, provider_port, wire)
    run = run_turn(conversation, alice, "Explain this [[tokens=25]]")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert reply_of(run) == "".join(scripted_tokens(25))
    usage = UsageRecord.objects.get(run=run)
    assert usage.completion_tokens == 25
    assert usage.prompt_tokens > 0
    assert usage.model == FORMATS[wire][0]
    assert usage.outcome == "ok"
    # A second turn carries the history: the prompt grows.
    second = run_turn(conversation, alice, "And now? [[tokens=3]]")
    assert second.status == RunStatus.SUCCEEDED
    assert UsageRecord.objects.get(run=second).prompt_tokens > usage.prompt_tokens


def test_it_retries_a_rate_limit_then_succeeds(
    stream_client, provider_port, team, conversation, alice, no_runs
):
    use_model(team, provider_port)
    run = run_turn(conversation, alice, "Busy? [[error=429 fail_times=1 tokens=5]]")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert reply_of(run) == "".join(scripted_tokens(5))


@pytest.mark.parametrize(
    ("content", "key", "model", "words"),
    [
        ("hi", "bad-key", None, "rejected the API key"),
        ("hi", "test-key", "openai/no-such-model", "was not found"),
        ("hi [[error=500]]", "test-key", None, "internal error (500)"),
        ("hi [[error=400]]", "test-key", None, "refused the request"),
        ("hi [[error=429]]", "test-key", None, "rate limiting"),
    ],
)
def test_it_fails_in_words_and_keeps_the_message(
    settings,
    stream_client,
    provider_port,
    team,
    conversation,
    alice,
    no_runs,
    content,
    key,
    model,
    words,
):
    settings.LLM_MAX_RETRIES = 1
    use_model(team, provider_port, key=key, model=model)
    run = run_turn(conversation, alice, content)
    assert run.status == RunStatus.FAILED
    assert words in run.error
    assert Message.objects.filter(conversation=conversation, role=Role.USER).count() == 1
    assert UsageRecord.objects.get(run=run).outcome != "ok"


@pytest.mark.parametrize("wire", list(FORMATS))
def test_a_broken_stream_keeps_the_partial_text(
    wire, stream_client, provider_port, team, conversation, alice, no_runs
):
    use_model(team, provider_port, wire)
    run = run_turn(conversation, alice, "go [[tokens=50 break_after=10]]")
    assert run.status == RunStatus.FAILED
    assert "broke off" in run.error
    assert reply_of(run) == "".join(scripted_tokens(50)[:10])


def test_an_unreachable_provider_is_named(
    settings, stream_client, team, conversation, alice, no_runs
):
    settings.LLM_MAX_RETRIES = 0
    use_model(team, 9)  # port 9 (discard): nothing listens on loopback
    run = run_turn(conversation, alice, "hello")
    assert run.status == RunStatus.FAILED
    assert "Could not reach the model provider" in run.error


def test_a_slow_provider_times_out(
    settings, stream_client, provider_port, team, conversation, alice, no_runs
):
    settings.LLM_TIMEOUT = 1
    settings.LLM_MAX_RETRIES = 0
    use_model(team, provider_port)
    run = run_turn(conversation, alice, "slow [[tokens=3 first_token_ms=4000]]")
    assert run.status == RunStatus.FAILED
    assert "did not answer within 1 seconds" in run.error


def test_stop_ends_the_run_and_keeps_the_partial_text(
    provider_port, team, conversation, alice, no_runs
):
    use_model(team, provider_port)
    sent = message_send(
        conversation=conversation, author=alice, content="long [[tokens=2000 delay_ms=5]]"
    )
    run_id = str(sent.run.uuid)

    async def scenario() -> float:
        task = asyncio.create_task(execute_run(run_id))
        while (await streams.snapshot(run_id)).seq < 3:
            await asyncio.sleep(0.02)
        stopped_at = time.monotonic()
        await asyncio.to_thread(streams.request_cancel, run_id)
        await task
        return time.monotonic() - stopped_at

    elapsed = asyncio.run(scenario())
    sent.run.refresh_from_db()
    assert sent.run.status == RunStatus.CANCELLED
    text = reply_of(sent.run)
    full = "".join(scripted_tokens(2000))
    assert text and full.startswith(text) and len(text) < len(full)
    assert elapsed < 2, f"Stop took {elapsed:.2f}s"


def test_a_run_delivered_twice_runs_once(provider_port, team, conversation, alice, no_runs):
    use_model(team, provider_port)
    sent = message_send(conversation=conversation, author=alice, content="once [[tokens=10]]")

    async def twice() -> None:
        await asyncio.gather(execute_run(str(sent.run.uuid)), execute_run(str(sent.run.uuid)))

    asyncio.run(twice())
    assert Message.objects.filter(run=sent.run).count() == 1
    assert UsageRecord.objects.filter(run=sent.run).count() == 1


def test_the_demo_model_streams_without_configuration(settings):
    settings.LLM_MODEL = ""
    config = llm.site_config()
    assert config.is_demo and config.label == llm.DEMO_LABEL

    async def collect() -> list:
        return [item async for item in llm.stream_chat(config, [{"role": "user", "content": "hi"}])]

    items = asyncio.run(collect())
    text = "".join(item for item in items if isinstance(item, str))
    assert "Demo model" in text
    assert isinstance(items[-1], llm.Usage)
    assert len(items) > 10  # streamed piece by piece


def test_check_connection_reports_in_words(provider_port):
    good = llm.LLMConfig("openai/fake-model", f"http://127.0.0.1:{provider_port}/v1", "k")
    assert "answered in" in asyncio.run(llm.check_connection(good))
    bad = llm.LLMConfig("openai/fake-model", f"http://127.0.0.1:{provider_port}/v1", "bad-key")
    with pytest.raises(llm.LLMError, match="rejected the API key"):
        asyncio.run(llm.check_connection(bad))
