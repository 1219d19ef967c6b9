"""Runs through the LLM gateway against the fake provider over real HTTP, in each wire format,
and every way a provider fails: the user's message is kept and the reason is shown in words."""

from __future__ import annotations

import asyncio
import json

import pytest

from assistant import llm, streams
from assistant.agent import execute_run
from assistant.fakellm.script import scripted_tokens
from assistant.models import Message, Role, Run, RunStatus
from assistant.services import message_send
from usage.models import UsageRecord

# Runs go through the database; the tool-call tests below talk to the provider only and skip
# the per-test flush this costs.
uses_db = pytest.mark.django_db(transaction=True)

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


@uses_db
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


@uses_db
def test_it_retries_a_rate_limit_then_succeeds(
    stream_client, provider_port, team, conversation, alice, no_runs
):
    use_model(team, provider_port)
    run = run_turn(conversation, alice, "Busy? [[error=429 fail_times=1 tokens=5]]")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert reply_of(run) == "".join(scripted_tokens(5))


@uses_db
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


@uses_db
@pytest.mark.parametrize("wire", list(FORMATS))
def test_a_broken_stream_keeps_the_partial_text(
    wire, stream_client, provider_port, team, conversation, alice, no_runs
):
    use_model(team, provider_port, wire)
    run = run_turn(conversation, alice, "go [[tokens=50 break_after=10]]")
    assert run.status == RunStatus.FAILED
    assert "broke off" in run.error
    assert reply_of(run) == "".join(scripted_tokens(50)[:10])


@uses_db
def test_an_unreachable_provider_is_named(
    settings, stream_client, team, conversation, alice, no_runs
):
    settings.LLM_MAX_RETRIES = 0
    use_model(team, 9)  # port 9 (discard): nothing listens on loopback
    run = run_turn(conversation, alice, "hello")
    assert run.status == RunStatus.FAILED
    assert "Nothing answered at 127.0.0.1:9: the connection was refused" in run.error


@uses_db
def test_a_slow_provider_times_out(
    settings, stream_client, provider_port, team, conversation, alice, no_runs
):
    settings.LLM_TIMEOUT = 1
    settings.LLM_MAX_RETRIES = 0
    use_model(team, provider_port)
    run = run_turn(conversation, alice, "slow [[tokens=3 first_token_ms=4000]]")
    assert run.status == RunStatus.FAILED
    assert "did not answer within 1 seconds" in run.error


@uses_db
def test_stop_ends_the_run_and_keeps_the_partial_text(
    provider_port, team, conversation, alice, no_runs
):
    use_model(team, provider_port)
    sent = message_send(
        conversation=conversation, author=alice, content="long [[tokens=2000 delay_ms=5]]"
    )
    run_id = str(sent.run.uuid)

    async def scenario() -> None:
        task = asyncio.create_task(execute_run(run_id))
        while (await streams.snapshot(run_id)).seq < 3:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(streams.request_cancel, run_id)
        await asyncio.wait_for(task, 60)  # a hang guard, not a speed claim

    asyncio.run(scenario())
    sent.run.refresh_from_db()
    assert sent.run.status == RunStatus.CANCELLED
    text = reply_of(sent.run)
    full = "".join(scripted_tokens(2000))
    # Cut short: the whole reply would have been written, not cancelled, had Stop not ended it.
    assert text and full.startswith(text) and len(text) < len(full)


@uses_db
def test_a_run_delivered_twice_runs_once(provider_port, team, conversation, alice, no_runs):
    use_model(team, provider_port)
    sent = message_send(conversation=conversation, author=alice, content="once [[tokens=10]]")

    async def twice() -> None:
        await asyncio.gather(execute_run(str(sent.run.uuid)), execute_run(str(sent.run.uuid)))

    asyncio.run(twice())
    assert Message.objects.filter(run=sent.run).count() == 1
    assert UsageRecord.objects.filter(run=sent.run).count() == 1


@uses_db
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


@uses_db
def test_check_connection_reports_in_words(provider_port):
    good = llm.LLMConfig("openai/fake-model", f"http://127.0.0.1:{provider_port}/v1", "k")
    assert "answered in" in asyncio.run(llm.check_connection(good))
    bad = llm.LLMConfig("openai/fake-model", f"http://127.0.0.1:{provider_port}/v1", "bad-key")
    with pytest.raises(llm.LLMError, match="rejected the API key"):
        asyncio.run(llm.check_connection(bad))


def test_check_connection_says_what_happened(provider_port, monkeypatch):
    """Not "an internal error (500)": a missing key and a dead port are said as such."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    no_key = llm.LLMConfig("openai/fake-model", f"http://127.0.0.1:{provider_port}/v1", "")
    with pytest.raises(llm.LLMError, match="No API key is set") as raised:
        asyncio.run(llm.check_connection(no_key))
    assert "500" not in raised.value.message
    dead = llm.LLMConfig("openai/fake-model", "http://127.0.0.1:9/v1", "k")
    with pytest.raises(llm.LLMError, match="Nothing answered at 127.0.0.1:9") as raised:
        asyncio.run(llm.check_connection(dead))
    assert "500" not in raised.value.message


def test_an_unknown_host_is_named():
    error = OSError(
        "Cannot connect to host nowhere.invalid:8080 ssl:default [Name or service not known]"
    )
    translated = llm.translate_error(error, llm.LLMConfig("openai/x", "", "k"))
    assert "host name nowhere.invalid:8080 could not be found" in translated.message


# --- tool calls: the API the agent loop drives, in each wire format through each client -----

READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file of the repository.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}
GREP = {
    "type": "function",
    "function": {
        "name": "grep",
        "description": "Search the repository.",
        "parameters": {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "paths": {"type": "array"}},
        },
    },
}
TOOLS = [READ_FILE, GREP]
READ_ARGS = {"path": "src/app.py"}
GREP_ARGS = {"pattern": "def main", "paths": ["a.py", "b/"]}
TWO_CALLS = f"[[tool read_file {json.dumps(READ_ARGS)}]] [[tool grep {json.dumps(GREP_ARGS)}]]"


def provider(port: int, wire: str) -> llm.LLMConfig:
    name, path = FORMATS[wire]
    return llm.LLMConfig(name, f"http://127.0.0.1:{port}{path}", "test-key")


async def ask(config: llm.LLMConfig, messages: list[dict], tools=TOOLS) -> list:
    return [item async for item in llm.stream_chat(config, messages, tools)]


def calls_in(items: list) -> list[llm.ToolCallRequest]:
    return [item for item in items if isinstance(item, llm.ToolCallRequest)]


def text_in(items: list) -> str:
    return "".join(item for item in items if isinstance(item, str))


def with_results(messages: list[dict], calls, results: list[str]) -> list[dict]:
    """The history after the agent ran the calls: what the agent loop sends next."""
    tool_calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]
    return [
        *messages,
        {"role": "assistant", "content": "", "tool_calls": tool_calls},
        *(
            {"role": "tool", "tool_call_id": c.id, "content": r}
            for c, r in zip(calls, results, strict=True)
        ),
    ]


def assert_well_formed(items: list) -> None:
    """Text first, then tool calls, then exactly one Usage, last."""
    kinds = [type(item).__name__ for item in items]
    assert kinds[-1] == "Usage" and kinds.count("Usage") == 1, kinds
    assert kinds == sorted(kinds[:-1], key=["str", "ToolCallRequest"].index) + ["Usage"]


@pytest.mark.parametrize("wire", list(FORMATS))
def test_a_tool_call_and_the_reply_to_its_result(wire, stream_client, provider_port):
    config = provider(provider_port, wire)
    messages = [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": f"Look [[tool read_file {json.dumps(READ_ARGS)}]]"},
    ]

    async def scenario() -> tuple[list, list]:
        first = await ask(config, messages)
        second = await ask(config, with_results(messages, calls_in(first), ["print('hi')"]))
        return first, second

    first, second = asyncio.run(scenario())
    assert_well_formed(first)
    [call] = calls_in(first)
    assert call.name == "read_file" and json.loads(call.arguments) == READ_ARGS
    assert call.id
    assert text_in(first) == ""
    assert first[-1].completion_tokens > 0 and first[-1].ttft_ms is not None
    assert_well_formed(second)
    assert calls_in(second) == []
    assert text_in(second) == "Tool result received: print('hi')"


@pytest.mark.parametrize("wire", list(FORMATS))
def test_two_tool_calls_in_sequence(wire, stream_client, provider_port):
    config = provider(provider_port, wire)
    messages = [{"role": "user", "content": f"Find it {TWO_CALLS}"}]

    async def scenario() -> list[list]:
        history, replies = messages, []
        for result in ("the file", "2 matches"):
            replies.append(await ask(config, history))
            history = with_results(history, calls_in(replies[-1]), [result])
        replies.append(await ask(config, history))
        return replies

    first, second, last = asyncio.run(scenario())
    [read] = calls_in(first)
    [grep] = calls_in(second)
    assert (read.name, json.loads(read.arguments)) == ("read_file", READ_ARGS)
    assert (grep.name, json.loads(grep.arguments)) == ("grep", GREP_ARGS)
    assert read.id != grep.id
    assert text_in(last) == "Tool result received: 2 matches" and calls_in(last) == []


@pytest.mark.parametrize("wire", list(FORMATS))
def test_parallel_tool_calls_in_one_response(wire, stream_client, provider_port):
    config = provider(provider_port, wire)
    messages = [{"role": "user", "content": f"Both {TWO_CALLS} [[parallel=1]]"}]

    async def scenario() -> tuple[list, list]:
        first = await ask(config, messages)
        results = ["the file", "grep output"]
        return first, await ask(config, with_results(messages, calls_in(first), results))

    first, second = asyncio.run(scenario())
    assert_well_formed(first)
    calls = calls_in(first)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("read_file", READ_ARGS),
        ("grep", GREP_ARGS),
    ]
    assert len({c.id for c in calls}) == 2
    assert text_in(second) == "Tool result received: grep output"


@pytest.mark.parametrize("wire", list(FORMATS))
def test_a_stream_broken_in_tool_arguments_is_not_retried(
    wire, settings, stream_client, provider_port
):
    settings.LLM_MAX_RETRIES = 2
    config = provider(provider_port, wire)
    # The first call's arguments come in 3 pieces: the connection drops in the second call's
    # arguments (Ollama, which sends calls whole, has sent the first by then).
    content = f"{TWO_CALLS} [[parallel=1 break_after=4]]"
    received: list = []

    async def scenario() -> None:
        stream = llm.stream_chat(config, [{"role": "user", "content": content}], TOOLS)
        async for item in stream:
            received.append(item)

    with pytest.raises(llm.LLMError) as raised:
        asyncio.run(scenario())
    assert raised.value.code == "stream_broken" and not raised.value.retryable
    assert received == []  # a half-made call is never handed out


def test_calls_without_ids_get_unique_ones(settings, provider_port):
    # Ollama's wire format has no call ids; the agent loop still needs one per call.
    settings.LLM_STREAM_CLIENT = "direct"
    config = provider(provider_port, "ollama")
    messages = [{"role": "user", "content": f"{TWO_CALLS} [[parallel=1]]"}]
    ids = [call.id for _ in range(2) for call in calls_in(asyncio.run(ask(config, messages)))]
    assert len(set(ids)) == 4 and all(i.startswith("call_") for i in ids)


def test_a_request_without_tools_is_sent_as_before():
    from assistant.llm import direct

    plain = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "more"}]},
    ]
    assert direct._anthropic_messages(plain) == plain[1:]
    assert direct._ollama_messages(plain) == plain
    assert all(a is b for a, b in zip(direct._ollama_messages(plain), plain, strict=True))


def test_tool_history_in_each_providers_shape():
    from assistant.llm import direct

    call = {"id": "call_1", "type": "function", "function": {"name": "grep", "arguments": ""}}
    bad = {"id": "call_2", "type": "function", "function": {"name": "ls", "arguments": "{oops"}}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [call, bad]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "tool", "tool_call_id": "call_2", "content": "a.py"},
        {"role": "assistant", "content": "Next:", "tool_calls": [{**call, "id": "call_3"}]},
        {"role": "tool", "tool_call_id": "call_3", "content": "again"},
    ]
    assert direct._anthropic_messages(messages) == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "grep", "input": {}},
                {"type": "tool_use", "id": "call_2", "name": "ls", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "found"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "a.py"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Next:"},
                {"type": "tool_use", "id": "call_3", "name": "grep", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_3", "content": "again"}],
        },
    ]
    assert direct._anthropic_tool(GREP) == {
        "name": "grep",
        "description": "Search the repository.",
        "input_schema": GREP["function"]["parameters"],
    }
    ollama = direct._ollama_messages(messages)
    assert ollama[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "grep", "arguments": {}}},
            {"function": {"name": "ls", "arguments": {}}},
        ],
    }
    assert ollama[2] == {"role": "tool", "content": "found", "tool_name": "grep"}
    assert ollama[3] == {"role": "tool", "content": "a.py", "tool_name": "ls"}
    # litellm would put "[System: Empty message content sanitised...]" in the model's mouth.
    assert llm._no_blank_text_beside_calls(messages)[1]["content"] is None
    assert llm._no_blank_text_beside_calls(messages)[4]["content"] == "Next:"
