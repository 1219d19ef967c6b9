"""Lean streaming clients for the three common wire formats: OpenAI Chat Completions (and every
OpenAI-compatible server), Anthropic Messages and Ollama chat.

Why not litellm for these: measured on the project's 2-core machine, litellm spends ~1 ms of
CPU per streamed chunk (it builds several pydantic objects per chunk and rebuilds the whole
response at the end), against ~0.03 ms here. At 50 replies streaming 33 tokens a second that is
1.6 cores versus 0.05 (docs/benchmarks.md). Every other provider, and every non-streaming call,
still goes through litellm; ``LLM_STREAM_CLIENT=litellm`` sends these through it too.

Messages and tools arrive in OpenAI's shape and are translated here for Anthropic and Ollama.
Tool calls come back as ``ToolFragment``s, which the gateway puts together per call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    # Imported where a call is made: the web processes import this module (through the
    # gateway) but never call a provider, and aiohttp is ~10 MB and a tenth of their start-up.
    import aiohttp

DEFAULT_BASES = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama_chat": "http://localhost:11434",
}
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_MAX_TOKENS = 8192


@dataclass
class ToolFragment:
    """Part of one streamed tool call. Fragments with the same ``index`` belong to one call:
    the first usually carries the id and name, the rest more of the arguments' JSON text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Piece:
    """One parsed event of a provider stream."""

    text: str = ""
    finished: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tool_fragments: tuple[ToolFragment, ...] = ()


class ProviderHTTPError(Exception):
    """The provider answered with an HTTP error status."""

    def __init__(self, status: int, message: str, retry_after: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status_code = status
        self.message = message
        self.retry_after = retry_after


def supports(model: str) -> bool:
    return model.split("/", 1)[0] in DEFAULT_BASES and "/" in model


_sessions: dict[int, aiohttp.ClientSession] = {}


def _session() -> aiohttp.ClientSession:
    """One connection pool per event loop (sessions belong to the loop that made them)."""
    loop = asyncio.get_running_loop()
    session = _sessions.get(id(loop))
    if session is None or session.closed:
        import aiohttp

        from .bases import CheckingResolver

        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, resolver=CheckingResolver())
        session = aiohttp.ClientSession(connector=connector)
        _sessions[id(loop)] = session
    return session


def _timeout() -> aiohttp.ClientTimeout:
    import aiohttp

    # No total limit (a long reply is fine); a provider silent for LLM_TIMEOUT seconds is not.
    return aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=settings.LLM_TIMEOUT)


async def pieces(
    *,
    model: str,
    api_base: str,
    api_key: str,
    temperature: float | None,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    check_addresses: bool = False,
) -> AsyncIterator[Piece]:
    from .bases import checking

    # A team's base: every address connected to is checked (llm/bases.py). Set for each call,
    # in the task that iterates this stream.
    checking.set(check_addresses)
    provider, name = model.split("/", 1)
    base = (api_base or DEFAULT_BASES[provider]).rstrip("/")
    if provider == "openai":
        stream = _openai(base, name, api_key, temperature, messages, tools)
    elif provider == "anthropic":
        stream = _anthropic(base, name, api_key, temperature, messages, tools)
    else:
        stream = _ollama(base, name, api_key, temperature, messages, tools)
    async for piece in stream:
        yield piece


async def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> aiohttp.ClientResponse:
    response = await _session().post(url, json=body, headers=headers, timeout=_timeout())
    if response.status >= 400:
        text = await response.text(errors="replace")
        response.release()
        raise ProviderHTTPError(
            response.status, _error_message(text), response.headers.get("retry-after")
        )
    return response


def _error_message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error)[:300]


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for line in response.content:
            line = line.strip()
            if line:
                yield line
    finally:
        response.release()


async def _openai(
    base: str,
    name: str,
    api_key: str,
    temperature: float | None,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> AsyncIterator[Piece]:
    body: dict[str, Any] = {
        "model": name,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if temperature is not None:
        body["temperature"] = temperature
    if tools:
        body["tools"] = tools
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = await _post(f"{base}/chat/completions", body, headers)
    async for line in _lines(response):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        event = json.loads(data)
        if event.get("error"):
            raise ProviderHTTPError(500, _error_message(json.dumps(event)))
        piece = Piece()
        usage = event.get("usage")
        if usage:
            piece.prompt_tokens = usage.get("prompt_tokens")
            piece.completion_tokens = usage.get("completion_tokens")
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            piece.text += delta.get("content") or ""
            if delta.get("tool_calls"):
                piece.tool_fragments += _openai_fragments(delta["tool_calls"])
            piece.finished = piece.finished or bool(choice.get("finish_reason"))
        yield piece


def _openai_fragments(calls: list[dict[str, Any]]) -> tuple[ToolFragment, ...]:
    fragments = []
    for position, call in enumerate(calls):
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        if not isinstance(arguments, str):  # some OpenAI-compatible servers send an object
            arguments = json.dumps(arguments)
        index = call.get("index")
        fragments.append(
            ToolFragment(
                index=position if index is None else index,
                id=call.get("id") or "",
                name=function.get("name") or "",
                arguments=arguments,
            )
        )
    return tuple(fragments)


async def _anthropic(
    base: str,
    name: str,
    api_key: str,
    temperature: float | None,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> AsyncIterator[Piece]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    body: dict[str, Any] = {
        "model": name,
        "max_tokens": ANTHROPIC_MAX_TOKENS,
        "messages": _anthropic_messages(messages),
        "stream": True,
    }
    if system:
        body["system"] = system
    if temperature is not None:
        body["temperature"] = min(temperature, 1.0)  # Anthropic's range is 0..1
    if tools:
        body["tools"] = [_anthropic_tool(tool) for tool in tools]
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if api_key:
        headers["x-api-key"] = api_key
    url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
    response = await _post(url, body, headers)
    async for line in _lines(response):
        if not line.startswith(b"data:"):
            continue
        event = json.loads(line[5:])
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                yield Piece(text=delta.get("text", ""))
            elif delta.get("type") == "input_json_delta":
                partial = delta.get("partial_json") or ""
                fragment = ToolFragment(event.get("index", 0), arguments=partial)
                yield Piece(tool_fragments=(fragment,))
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = event.get("index", 0)
                fragment = ToolFragment(index, block.get("id") or "", block.get("name") or "")
                yield Piece(tool_fragments=(fragment,))
        elif kind == "message_start":
            usage = (event.get("message") or {}).get("usage") or {}
            yield Piece(prompt_tokens=usage.get("input_tokens"))
        elif kind == "message_delta":
            usage = event.get("usage") or {}
            stopped = bool((event.get("delta") or {}).get("stop_reason"))
            yield Piece(completion_tokens=usage.get("output_tokens"), finished=stopped)
        elif kind == "message_stop":
            yield Piece(finished=True)
            return
        elif kind == "error":
            raise ProviderHTTPError(500, _error_message(json.dumps(event)))


def _anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    converted = {
        "name": function.get("name", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        converted["description"] = function["description"]
    return converted


def _anthropic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped history as Anthropic wants it. Messages without tool calls pass unchanged
    (so a request without tools is byte for byte what it was before tools existed)."""
    converted: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = (
        None  # the tool_result blocks of the user message being built
    )
    for message in messages:
        role = message.get("role")
        if role == "system":
            continue
        if role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
            }
            if message.get("content"):
                block["content"] = message["content"]
            if results is None:
                # Anthropic wants all results of one turn's calls together, in one user message.
                results = []
                converted.append({"role": "user", "content": results})
            results.append(block)
            continue
        results = None
        if role == "assistant" and message.get("tool_calls"):
            converted.append({"role": "assistant", "content": _tool_use_blocks(message)})
        else:
            converted.append(message)
    return converted


def _tool_use_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, list):
        blocks.extend(content)
    elif isinstance(content, str) and content.strip():
        # Anthropic rejects a text block that is empty or only whitespace.
        blocks.append({"type": "text", "text": content})
    for call in message["tool_calls"]:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": _json_object(function.get("arguments")),
            }
        )
    return blocks


def _json_object(arguments: object) -> dict[str, Any]:
    """Arguments as an object, for the formats that want one: a model can emit JSON that does
    not parse, and the provider would reject the whole history over it."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str | bytes | bytearray):
        return {}  # json.loads would refuse it too
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


async def _ollama(
    base: str,
    name: str,
    api_key: str,
    temperature: float | None,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> AsyncIterator[Piece]:
    body: dict[str, Any] = {"model": name, "messages": _ollama_messages(messages), "stream": True}
    if temperature is not None:
        body["options"] = {"temperature": temperature}
    if tools:
        body["tools"] = tools
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = await _post(f"{base}/api/chat", body, headers)
    calls_seen = 0
    async for line in _lines(response):
        event = json.loads(line)
        if event.get("error"):
            raise ProviderHTTPError(500, str(event["error"])[:300])
        message = event.get("message") or {}
        piece = Piece(text=message.get("content") or "")
        if message.get("tool_calls"):
            # Ollama sends each call whole, without an index: number them in arrival order.
            piece.tool_fragments = _ollama_fragments(message["tool_calls"], calls_seen)
            calls_seen += len(piece.tool_fragments)
        if event.get("done"):
            piece.finished = True
            piece.prompt_tokens = event.get("prompt_eval_count")
            piece.completion_tokens = event.get("eval_count")
        yield piece
        if piece.finished:
            return


def _ollama_fragments(calls: list[dict[str, Any]], first_index: int) -> tuple[ToolFragment, ...]:
    fragments = []
    for offset, call in enumerate(calls):
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments) if arguments else ""
        fragments.append(
            ToolFragment(
                index=first_index + offset,
                id=call.get("id") or "",  # recent Ollama versions send one, older ones do not
                name=function.get("name") or "",
                arguments=arguments,
            )
        )
    return tuple(fragments)


def _ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped history as Ollama wants it: call arguments as objects, tool results
    without call ids. Messages without tool calls pass unchanged."""
    names: dict[str, str] = {}
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                name = function.get("name", "")
                names[call.get("id", "")] = name
                arguments = _json_object(function.get("arguments"))
                calls.append({"function": {"name": name, "arguments": arguments}})
            content = _plain_text(message.get("content"))
            converted.append({"role": "assistant", "content": content, "tool_calls": calls})
        elif role == "tool":
            result = {"role": "tool", "content": _plain_text(message.get("content"))}
            # Ollama matches results to calls by name, where it matches them at all.
            name = names.get(message.get("tool_call_id", ""))
            if name:
                result["tool_name"] = name
            converted.append(result)
        else:
            converted.append(message)
    return converted


def _plain_text(content: object) -> str:
    """Ollama takes only a string as content; OpenAI also allows a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
