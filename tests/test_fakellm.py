"""The fake LLM server, called over real HTTP through litellm exactly as the app calls a provider.

Needs no database and no Django settings: it passes with and without ``-p no:django``.
"""

import asyncio
import gc
import itertools
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

from assistant.fakellm.script import (
    DEFAULT_DELAY_MS,
    Conversation,
    ToolCall,
    build_reply,
    parse_directives,
    pending_tool_calls,
    scripted_tokens,
    word_tokens,
)
from assistant.fakellm.server import start_server

PROVIDERS = {
    # name: (litellm model prefix, api_base path after http://127.0.0.1:PORT)
    "openai": ("openai", "/v1"),
    "anthropic": ("anthropic", ""),
    "ollama": ("ollama_chat", ""),
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "array"}},
        },
    },
}
WEATHER_ARGS = {"city": "Paris", "days": [1, 2]}
# litellm 1.106 imports its MCP gateway for any call that passes tools, and that import needs
# the optional `mcp` package; this private flag skips the gateway, which is irrelevant here.
TOOL_KWARGS = {"tools": [WEATHER_TOOL], "_skip_mcp_handler": True}


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_port():
    """The server on its own event loop in a background thread, as a test double would run."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fakellm", daemon=True)
    thread.start()
    runner, port = asyncio.run_coroutine_threadsafe(start_server(), loop).result(timeout=10)
    yield port
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture(autouse=True)
def _collect_abandoned_streams():
    """A stream abandoned by an error test is finalised by the garbage collector; if that
    happens while the same thread holds httpcore's (non-reentrant) pool lock inside a later
    call, the thread deadlocks. Collecting between tests finalises them at a safe moment."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch on import
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banner on every expected error
    return litellm


@pytest.fixture(params=list(PROVIDERS))
def llm(request, server_port) -> dict:
    """litellm keyword arguments that point one provider's wire format at the server."""
    prefix, path = PROVIDERS[request.param]
    return {
        "model": f"{prefix}/fake-model",
        "api_base": f"http://127.0.0.1:{server_port}{path}",
        "api_key": "test-key",
        "num_retries": 0,
        "max_retries": 0,
    }


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@dataclass
class Streamed:
    text: str = ""
    finish_reasons: list = field(default_factory=list)
    usage: object = None
    chunks: list = field(default_factory=list)

    def add(self, chunk) -> None:
        self.chunks.append(chunk)
        if chunk.choices:
            self.text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].finish_reason:
                self.finish_reasons.append(chunk.choices[0].finish_reason)
        if getattr(chunk, "usage", None):
            self.usage = chunk.usage


def read_stream(stream, into: Streamed | None = None) -> Streamed:
    """Read a litellm stream; pass ``into`` to keep what arrived before an exception."""
    into = into if into is not None else Streamed()
    for chunk in stream:
        into.add(chunk)
    return into


# --- text, usage, tool calls through litellm -------------------------------------------------


def test_streamed_text_is_the_scripted_tokens(litellm, llm):
    text = "Please [[tokens=60]] thanks"
    stream = litellm.completion(
        **llm, messages=user(text), stream=True, stream_options={"include_usage": True}
    )
    got = read_stream(stream)
    assert got.text == "".join(scripted_tokens(60))
    assert got.finish_reasons == ["stop"]
    assert got.usage.completion_tokens == 60
    assert got.usage.prompt_tokens == len(text) // 4


def test_non_streamed_text_is_the_scripted_tokens(litellm, llm):
    text = "[[tokens=7]] and a little more text"
    response = litellm.completion(**llm, messages=user(text))
    assert response.choices[0].message.content == "".join(scripted_tokens(7))
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == 7
    assert response.usage.prompt_tokens == len(text) // 4


def test_async_stream_and_content_parts(litellm, llm):
    parts = [{"type": "text", "text": "Count "}, {"type": "text", "text": "[[tokens=9]]"}]

    async def run() -> Streamed:
        messages = [{"role": "user", "content": parts}]
        stream = await litellm.acompletion(**llm, messages=messages, stream=True)
        got = Streamed()
        async for chunk in stream:
            got.add(chunk)
        return got

    got = asyncio.run(run())
    assert got.text == "".join(scripted_tokens(9))
    assert got.finish_reasons == ["stop"]


def test_non_streamed_tool_call(litellm, llm):
    text = f"Weather? [[tool get_weather {json.dumps(WEATHER_ARGS)}]]"
    response = litellm.completion(**llm, messages=user(text), **TOOL_KWARGS)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert call.id


def test_streamed_tool_call(litellm, llm):
    text = f"[[tool get_weather {json.dumps(WEATHER_ARGS)}]]"
    stream = litellm.completion(**llm, messages=user(text), stream=True, **TOOL_KWARGS)
    got = read_stream(stream)
    assert got.finish_reasons == ["tool_calls"]
    message = litellm.stream_chunk_builder(got.chunks).choices[0].message
    [call] = message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS


def test_reply_to_a_tool_result(litellm, llm):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps(WEATHER_ARGS)},
    }
    messages = [
        *user(f"[[tool get_weather {json.dumps(WEATHER_ARGS)}]]"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."},
    ]
    response = litellm.completion(**llm, messages=messages, **TOOL_KWARGS)
    assert response.choices[0].message.content == "Tool result received: Sunny, 21 degrees."
    assert not response.choices[0].message.tool_calls


def test_streamed_parallel_tool_calls(litellm, llm):
    text = '[[tool get_weather {"city": "Oslo"}]] [[tool get_time {}]] [[parallel=1]]'
    stream = litellm.completion(**llm, messages=user(text), stream=True, **TOOL_KWARGS)
    got = read_stream(stream)
    assert got.finish_reasons == ["tool_calls"]
    # Gathered by name, not by litellm's index: litellm numbers the calls of each Ollama chunk
    # from 0, and the fake Ollama sends each call in a chunk of its own.
    calls: list[list[str]] = []
    for chunk in got.chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function.name:
                calls.append([call.function.name, ""])
            calls[-1][1] += call.function.arguments or ""
    assert [(name, json.loads(args)) for name, args in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {}),
    ]


# --- errors ----------------------------------------------------------------------------------

ERRORS = {
    # case: (message text, api key, model name, the litellm exception it must raise)
    "rate-limit": ("[[error=429]]", "test-key", "fake-model", "RateLimitError"),
    "bad-key": ("hello", "bad-key", "fake-model", "AuthenticationError"),
    "no-such-model": ("hello", "test-key", "no-such-model", "NotFoundError"),
    "bad-request": ("[[error=400]]", "test-key", "fake-model", "BadRequestError"),
    "server-error": ("[[error=500]]", "test-key", "fake-model", "InternalServerError"),
    "unavailable": ("[[error=503]]", "test-key", "fake-model", "ServiceUnavailableError"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_map_to_litellm_exceptions(litellm, llm, case, stream):
    text, api_key, model_name, exception_name = ERRORS[case]
    model = llm["model"].replace("fake-model", model_name)
    kwargs = {**llm, "api_key": api_key, "model": model}
    with pytest.raises(getattr(litellm, exception_name)):
        response = litellm.completion(**kwargs, messages=user(text), stream=stream)
        if stream:
            read_stream(response)


def test_fail_times_fails_first_then_succeeds(litellm, llm):
    # The text is unique per provider: failure counts are per distinct message text.
    text = f"[[error=500 fail_times=2 tokens=3]] {llm['model']}"
    for _ in range(2):
        with pytest.raises(litellm.InternalServerError):
            litellm.completion(**llm, messages=user(text))
    response = litellm.completion(**llm, messages=user(text))
    assert response.choices[0].message.content == "".join(scripted_tokens(3))


def test_stream_broken_midway_raises_after_the_first_tokens(litellm, llm):
    # litellm raises MidStreamFallbackError (a ServiceUnavailableError) for all three formats
    # when the body ends without its final chunk; nothing ends silently.
    stream = litellm.completion(**llm, messages=user("[[tokens=10 break_after=4]]"), stream=True)
    got = Streamed()
    with pytest.raises(litellm.exceptions.MidStreamFallbackError):
        read_stream(stream, into=got)
    assert got.text == "".join(scripted_tokens(10)[:4])
    assert got.finish_reasons == []


def test_non_streamed_reply_broken_midway_raises(litellm, llm):
    # The connection drops before any response: litellm reports a connection-class error
    # (InternalServerError for OpenAI and Anthropic, APIConnectionError for Ollama).
    with pytest.raises((litellm.APIConnectionError, litellm.InternalServerError)):
        litellm.completion(**llm, messages=user("[[tokens=10 break_after=4]]"))


# --- raw HTTP: what litellm does not show ----------------------------------------------------


def post(port: int, path: str, body: dict, headers: dict | None = None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return urllib.request.urlopen(request, timeout=10)


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.load(response)


def test_rate_limit_carries_retry_after(server_port):
    body = {"model": "fake-model", "messages": user("[[error=429]]")}
    with pytest.raises(urllib.error.HTTPError) as raised:
        post(server_port, "/v1/chat/completions", body)
    assert raised.value.code == 429
    assert raised.value.headers["Retry-After"] == "1"
    assert json.load(raised.value)["error"]["code"] == "rate_limit_exceeded"


def test_stamps_are_emit_times_and_delays_apply(server_port):
    body = {
        "model": "fake-model",
        "stream": False,
        "messages": user("[[tokens=5 stamp=1 delay_ms=20 first_token_ms=100]]"),
    }
    started = time.time()
    with post(server_port, "/api/chat", body) as response:
        content = json.load(response)["message"]["content"]
    stamps = [float(word) for word in content.split()]
    assert len(stamps) == 5
    assert stamps == sorted(stamps)
    assert stamps[0] - started >= 0.1  # first_token_ms + delay_ms before the first token
    assert stamps[-1] - stamps[0] >= 0.07  # four more delays of 20 ms


def test_model_listings(server_port):
    assert "fake-model" in [model["id"] for model in get_json(server_port, "/v1/models")["data"]]
    tags = get_json(server_port, "/api/tags")["models"]
    assert "fake-model:latest" in [model["name"] for model in tags]
    with post(server_port, "/api/show", {"name": "fake-model"}) as response:
        assert "context_length" in json.dumps(json.load(response)["model_info"])


def test_hundreds_of_concurrent_streams(server_port):
    import aiohttp

    expected = "".join(scripted_tokens(20))
    # Each stream's first and last token as they arrive, in order (a counter, not a clock).
    arrivals = itertools.count()

    async def one(session: aiohttp.ClientSession, index: int) -> tuple[str, int, int]:
        body = {"model": "fake-model", "messages": user(f"[[tokens=20 delay_ms=5]] #{index}")}
        async with session.post(f"http://127.0.0.1:{server_port}/api/chat", json=body) as resp:
            lines = []
            async for line in resp.content:
                if line.strip():
                    lines.append((json.loads(line), next(arrivals)))
        assert lines[0][0]["done"] is False and lines[-1][0]["done"] is True
        return "".join(line["message"]["content"] for line, _ in lines), lines[0][1], lines[-1][1]

    async def run() -> list[tuple[str, int, int]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await asyncio.gather(*(one(session, i) for i in range(300)))

    streams = asyncio.run(run())
    assert [text for text, _, _ in streams] == [expected] * 300
    # Side by side: at some moment a hundred or more were under way (one after another: one).
    edges = sorted([(first, 1) for _, first, _ in streams] + [(last, -1) for _, _, last in streams])
    at_once = max(itertools.accumulate(step for _, step in edges))
    assert at_once >= 100, at_once


# --- tool-call sequences, in each wire format's own message shapes ---------------------------

WIRE_PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}


@dataclass
class Answer:
    text: str
    calls: list[tuple[str | None, str, dict]]  # (id, name, arguments); Ollama has no ids


def ask(port: int, wire: str, messages: list[dict]) -> Answer:
    body = {"model": "fake-model", "messages": messages, "stream": False, "max_tokens": 100}
    with post(port, WIRE_PATHS[wire], body) as response:
        data = json.load(response)
    if wire == "openai":
        message = data["choices"][0]["message"]
        calls = [
            (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in message.get("tool_calls") or []
        ]
        return Answer(message["content"] or "", calls)
    if wire == "anthropic":
        blocks = data["content"]
        calls = [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"]
        return Answer("".join(b.get("text", "") for b in blocks), calls)
    message = data["message"]
    calls = [
        (None, c["function"]["name"], c["function"]["arguments"])
        for c in message.get("tool_calls") or []
    ]
    return Answer(message["content"], calls)


def answered(wire: str, calls: list, results: list[str]) -> list[dict]:
    """The assistant's tool-call message and the results, as a client of ``wire`` sends them."""
    if wire == "anthropic":
        uses = [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls]
        blocks = [
            {"type": "tool_result", "tool_use_id": i, "content": [{"type": "text", "text": r}]}
            for (i, _, _), r in zip(calls, results, strict=True)
        ]
        return [{"role": "assistant", "content": uses}, {"role": "user", "content": blocks}]
    if wire == "openai":
        tool_calls = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in calls
        ]
        results_messages = [
            {"role": "tool", "tool_call_id": i, "content": r}
            for (i, _, _), r in zip(calls, results, strict=True)
        ]
        return [{"role": "assistant", "content": None, "tool_calls": tool_calls}, *results_messages]
    tool_calls = [{"function": {"name": n, "arguments": a}} for _, n, a in calls]
    return [
        {"role": "assistant", "content": "", "tool_calls": tool_calls},
        *({"role": "tool", "content": r} for r in results),
    ]


@pytest.mark.parametrize("wire", list(WIRE_PATHS))
def test_tool_calls_come_one_per_reply_in_order(server_port, wire):
    messages = user('Go [[tool read {"path": "a.py"}]] [[tool grep {"q": "x"}]] [[tool run]]')
    ids, expected = [], [("read", {"path": "a.py"}), ("grep", {"q": "x"}), ("run", {})]
    for step, (name, arguments) in enumerate(expected):
        answer = ask(server_port, wire, messages)
        assert answer.text == ""
        [(call_id, got_name, got_arguments)] = answer.calls
        assert (got_name, got_arguments) == (name, arguments)
        ids.append(call_id)
        messages += answered(wire, answer.calls, [f"result {step}"])
    assert ask(server_port, wire, messages).text == "Tool result received: result 2"
    if wire != "ollama":
        assert len(set(ids)) == 3
    # A new user message starts over: the rounds before it do not count.
    later = [*messages, *user("[[tokens=2]]")]
    assert ask(server_port, wire, later) == Answer("alpha bravo", [])
    again = [*messages, *user("[[tool grep {}]]")]
    assert ask(server_port, wire, again).calls[0][1:] == ("grep", {})


@pytest.mark.parametrize("wire", list(WIRE_PATHS))
def test_parallel_tool_calls_come_in_one_reply(server_port, wire):
    messages = user('[[tool read {"path": "a.py"}]] [[parallel=1]] [[tool read {"path": "b"}]]')
    answer = ask(server_port, wire, messages)
    assert [call[1:] for call in answer.calls] == [
        ("read", {"path": "a.py"}),
        ("read", {"path": "b"}),
    ]
    if wire != "ollama":
        assert answer.calls[0][0] != answer.calls[1][0]
    messages += answered(wire, answer.calls, ["first", "second " * 100])
    final = ask(server_port, wire, messages)
    assert final == Answer("Tool result received: " + ("second " * 100)[:200], [])


def test_call_ids_are_unique_across_requests(server_port):
    body = {"model": "fake-model", "messages": user("[[tool run]]"), "stream": False}
    ids = set()
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/chat/completions"):
        with post(server_port, path, body) as response:
            data = json.load(response)
        if "choices" in data:
            ids.add(data["choices"][0]["message"]["tool_calls"][0]["id"])
        else:
            ids.add(data["content"][0]["id"])
    assert len(ids) == 3


# --- the script itself (pure functions) ------------------------------------------------------


def test_token_rule():
    assert scripted_tokens(0) == []
    assert scripted_tokens(1) == ["alpha"]
    assert "".join(scripted_tokens(3)) == "alpha bravo charlie"
    tokens = scripted_tokens(51)
    assert tokens[50] == "alpha" and tokens[49] == "yarrow "


def test_directive_parsing():
    text = (
        'Look [[tokens=5 delay_ms=2.5]] here [[tool run {"cmd": "[[ -f x ]]"}]] '
        "and [[ $a == b ]] [[unknown=1]] [[tokens=oops]]"
    )
    script, rest = parse_directives(text)
    assert script.tokens == 5 and script.delay_ms == 2.5
    assert script.tools == (ToolCall("run", {"cmd": "[[ -f x ]]"}),)
    assert rest == "Look  here  and [[ $a == b ]] [[unknown=1]] "


def conversation(text: str, tool_result: str | None = None, rounds: int = 0) -> Conversation:
    return Conversation(
        user_text=text, tool_result=tool_result, prompt_chars=len(text), tool_rounds=rounds
    )


def test_tool_call_sequence_rule():
    script, _ = parse_directives('[[tool a]] text [[tool b {"n": 1}]]')
    a, b = ToolCall("a", {}), ToolCall("b", {"n": 1})
    assert script.tools == (a, b) and not script.parallel
    assert [pending_tool_calls(script, k) for k in range(3)] == [(a,), (b,), ()]
    together, _ = parse_directives('[[tool a]] [[tool b {"n": 1}]] [[parallel=1]]')
    assert [pending_tool_calls(together, k) for k in range(2)] == [(a, b), ()]
    # A reply makes the next call even when the last tool result is in the conversation.
    assert build_reply(conversation("[[tool a]] [[tool b]]", "ok", rounds=1)).tool_calls == (
        ToolCall("b", {}),
    )
    done = build_reply(conversation("[[tool a]] [[tool b]]", "ok", rounds=2))
    assert "".join(done.tokens) == "Tool result received: ok" and not done.tool_calls
    # Calls answered without a result (an odd client): the other rules decide.
    assert "".join(build_reply(conversation("[[tool a]] [[tokens=2]]", rounds=1)).tokens) == (
        "alpha bravo"
    )


def test_echo_and_tool_result_replies():
    echo = build_reply(conversation("[[echo=1]] say  this\nback"))
    assert "".join(echo.tokens) == "say  this\nback"
    assert echo.tokens == ("say  ", "this\n", "back")
    long_result = "x" * 500
    reply = build_reply(conversation("[[tool run {}]]", tool_result=long_result, rounds=1))
    assert "".join(reply.tokens) == "Tool result received: " + "x" * 200
    assert reply.tool_calls == ()
    # A tool result with no scripted call (a model that was never told to call one) too.
    plain = build_reply(conversation("hello", tool_result="ok", rounds=1))
    assert "".join(plain.tokens) == "Tool result received: ok"


def test_demo_reply_without_directives():
    reply = build_reply(conversation("How do I deploy this?"))
    text = "".join(reply.tokens)
    assert "Demo model" in text and "How do I deploy this?" in text
    assert "LLM_MODEL" in text and "```python" in text
    assert reply.delay_ms == DEFAULT_DELAY_MS
    assert word_tokens(text) == list(reply.tokens)
    assert build_reply(conversation("[[tokens=2]]")).delay_ms == 0
