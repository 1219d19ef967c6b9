"""The fake LLM provider over real HTTP, in three wire formats (aiohttp, pure asyncio).

Routes:
    POST /v1/chat/completions, /chat/completions   OpenAI Chat Completions
    GET  /v1/models, /models                       model list (OpenAI and Anthropic shapes)
    POST /v1/messages                              Anthropic Messages
    POST /api/chat                                 Ollama chat
    GET  /api/tags, POST /api/show                 Ollama model list / model info

What the model replies is decided by ``script.build_reply`` from directives in the last user
message. Independently of directives: an API key (``Authorization: Bearer`` or ``x-api-key``)
equal to ``bad-key`` gets 401, and the model ``no-such-model`` gets 404.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from .script import Conversation, Reply, ToolCall, build_reply, tool_argument_pieces

BAD_KEY = "bad-key"
MISSING_MODEL = "no-such-model"
MODELS = ("fake-model", "demo")
RETRY_AFTER_SECONDS = "1"
_COMPACT = (",", ":")  # JSON separators without spaces, as the real providers send

FAIL_COUNTS = web.AppKey("fail_counts", dict)
CALL_IDS = web.AppKey[Iterator[int]]("call_ids")

_MESSAGES = {
    400: "Bad request (scripted by the fake LLM).",
    # OpenAI's own wording: litellm maps an OpenAI "invalid_request_error" to BadRequestError
    # unless the message says this, even with status 401.
    401: "Incorrect API key provided: bad-key.",
    404: "The model does not exist.",
    429: "Rate limit reached (scripted by the fake LLM). Please retry after 1s.",
    500: "Internal server error (scripted by the fake LLM).",
    503: "The service is temporarily unavailable (scripted by the fake LLM).",
}


class ProviderError(Exception):
    def __init__(self, status: int, message: str | None = None):
        super().__init__(status)
        self.status = status
        self.message = message or _MESSAGES.get(status, f"Error {status} (scripted).")


def make_app() -> web.Application:
    app = web.Application()
    app[FAIL_COUNTS] = {}
    app[CALL_IDS] = itertools.count(1)
    openai, anthropic, ollama = OpenAIWire(), AnthropicWire(), OllamaWire()
    app.router.add_post("/v1/chat/completions", openai.handle)
    app.router.add_post("/chat/completions", openai.handle)
    app.router.add_post("/v1/messages", anthropic.handle)
    app.router.add_post("/api/chat", ollama.handle)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/models", list_models)
    app.router.add_get("/api/tags", ollama_tags)
    app.router.add_post("/api/show", ollama_show)
    return app


async def start_server(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the server on the running event loop; return its runner and bound port.

    Stop it with ``await runner.cleanup()``.
    """
    # No access log: benchmarks send thousands of requests and logging each one costs.
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    # A large backlog so hundreds of clients connecting at once are not refused.
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    return runner, runner.addresses[0][1]


# --- shared plumbing -------------------------------------------------------------------------


class Wire:
    """One provider's wire format. Subclasses say how requests and replies look."""

    def conversation(self, body: dict) -> Conversation:
        raise NotImplementedError

    def wants_stream(self, body: dict) -> bool:
        return bool(body.get("stream"))

    def error_body(self, status: int, message: str) -> dict:
        raise NotImplementedError

    async def complete(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        raise NotImplementedError

    async def stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        raise NotImplementedError

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
            _check_credentials(request, body)
            reply = build_reply(self.conversation(body))
            _maybe_fail(request.app, reply)
        except ValueError as error:
            return self.error_response(ProviderError(400, f"Invalid request body: {error}"))
        except ProviderError as error:
            return self.error_response(error)
        try:
            if self.wants_stream(body):
                return await self.stream(request, body, reply)
            return await self.complete(request, body, reply)
        except ConnectionError:
            # The client went away mid-reply (a cancelled run, a benchmark hanging up): there
            # is no one to answer, and aiohttp would log it as a server error with a traceback.
            return _break_connection(request)

    def error_response(self, error: ProviderError) -> web.Response:
        # Retry-After on 429 lets clients (and litellm's retry logic) wait the right time.
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if error.status == 429 else None
        body = self.error_body(error.status, error.message)
        return web.json_response(body, status=error.status, headers=headers)


def _api_key(request: web.Request) -> str | None:
    bearer = request.headers.get("Authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:].strip()
    return request.headers.get("x-api-key")


def _check_credentials(request: web.Request, body: dict) -> None:
    if _api_key(request) == BAD_KEY:
        raise ProviderError(401)
    if body.get("model") == MISSING_MODEL:
        raise ProviderError(404, f"The model `{MISSING_MODEL}` does not exist.")


def _maybe_fail(app: web.Application, reply: Reply) -> None:
    status = reply.script.error
    if status is None or not 400 <= status <= 599:
        return
    if reply.script.fail_times is not None:
        counts = app[FAIL_COUNTS]
        counts[reply.fail_key] = counts.get(reply.fail_key, 0) + 1
        if counts[reply.fail_key] > reply.script.fail_times:
            return
    raise ProviderError(status)


def _units(reply: Reply) -> list[tuple[int | None, str]]:
    """What is paced out one by one, as (tool call index, unit): text tokens (index None), or
    the pieces of each tool call's arguments, call after call."""
    if reply.tool_calls:
        return [
            (index, piece)
            for index, call in enumerate(reply.tool_calls)
            for piece in tool_argument_pieces(call.arguments)
        ]
    return [(None, token) for token in reply.tokens]


async def _paced(reply: Reply) -> AsyncIterator[tuple[int | None, str]]:
    """Yield the reply's units with the scripted delays, stopping early for break_after.

    The stamp is taken after the sleep, immediately before the caller writes the unit.
    """
    units = _units(reply)
    if reply.script.break_after is not None:
        units = units[: max(0, reply.script.break_after)]
    stamp = reply.script.stamp and not reply.tool_calls
    for position, (call, unit) in enumerate(units):
        delay = reply.delay_ms + (reply.script.first_token_ms if position == 0 else 0.0)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        yield call, (f"{time.time():.6f} " if stamp else unit)


def _breaks(reply: Reply) -> bool:
    return reply.script.break_after is not None


def _break_connection(request: web.Request) -> web.Response:
    """Drop the connection mid-response, as a crashed or cut-off provider would.

    close() rather than abort(): the tokens already written are flushed first, and the
    client then sees the body end without the final chunk (an incomplete chunked read).
    aiohttp's later attempt to finish the response raises ConnectionError, which it ignores.
    """
    if request.transport is not None:
        request.transport.close()
    return web.Response()


async def _collect(reply: Reply) -> list[tuple[int | None, str]]:
    return [unit async for unit in _paced(reply)]


def _text_of(units: list[tuple[int | None, str]], call: int | None = None) -> str:
    """The text, or one tool call's argument JSON, put back together from paced units."""
    return "".join(unit for index, unit in units if index == call)


def _call_id(request: web.Request) -> str:
    ids = request.app[CALL_IDS]
    return f"call_{next(ids)}"


def content_text(content: object) -> str:
    """Text of a message content: a string, or a list of parts with ``type: text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _role_based_conversation(messages: list[dict]) -> Conversation:
    """OpenAI and Ollama: tool calls ride on assistant messages, results have role "tool"."""
    last_user = _last_index(messages, lambda m: m.get("role") == "user")
    since = messages[last_user + 1 :]
    results = [m for m in since if m.get("role") == "tool"]
    return Conversation(
        user_text=content_text(messages[last_user].get("content")) if last_user >= 0 else "",
        tool_result=content_text(results[-1].get("content")) if results else None,
        prompt_chars=sum(len(content_text(m.get("content"))) for m in messages),
        tool_rounds=sum(1 for m in since if m.get("role") == "assistant" and m.get("tool_calls")),
    )


def _last_index(messages: list[dict], predicate) -> int:
    """Index of the last message that satisfies predicate, -1 if none does."""
    for index in range(len(messages) - 1, -1, -1):
        if predicate(messages[index]):
            return index
    return -1


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("`messages` must be a list")
    return [m for m in messages if isinstance(m, dict)]


# --- OpenAI Chat Completions -----------------------------------------------------------------

_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("service_unavailable", None),
}


class OpenAIWire(Wire):
    def conversation(self, body: dict) -> Conversation:
        return _role_based_conversation(_messages(body))

    def error_body(self, status: int, message: str) -> dict:
        kind, code = _OPENAI_ERROR_TYPES.get(status, ("server_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    async def complete(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        units = await _collect(reply)
        if _breaks(reply):
            return _break_connection(request)
        message: dict = {"role": "assistant", "content": _text_of(units)}
        if reply.tool_calls:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": _call_id(request),
                    "type": "function",
                    "function": {"name": call.name, "arguments": _text_of(units, index)},
                }
                for index, call in enumerate(reply.tool_calls)
            ]
        return web.json_response(
            {
                **self._envelope(body, "chat.completion"),
                "choices": [{"index": 0, "message": message, "finish_reason": self._finish(reply)}],
                "usage": _openai_usage(reply, len(units)),
            }
        )

    async def stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        resp = await _start_stream(request, "text/event-stream")
        envelope = self._envelope(body, "chat.completion.chunk")

        async def send(delta: dict, finish: str | None = None, **extra) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            await _write_sse(resp, {**envelope, "choices": [choice], **extra})

        await send({"role": "assistant", "content": ""})
        emitted = 0
        opened = -1  # the last tool call whose first fragment (id and name) was sent
        async for call, unit in _paced(reply):
            if call is None:
                await send({"content": unit})
            else:
                if call != opened:
                    # As OpenAI does: id and name first, with empty arguments, then the pieces.
                    head = {"id": _call_id(request), "type": "function"}
                    function = {"name": reply.tool_calls[call].name, "arguments": ""}
                    await send({"tool_calls": [{"index": call, **head, "function": function}]})
                    opened = call
                await send({"tool_calls": [{"index": call, "function": {"arguments": unit}}]})
            emitted += 1
        if _breaks(reply):
            return _break_connection(request)
        usage = _openai_usage(reply, emitted)
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if include_usage:
            await send({}, self._finish(reply))
            await _write_sse(resp, {**envelope, "choices": [], "usage": usage})
        else:
            # Usage on the final chunk anyway, as several OpenAI-compatible servers do.
            await send({}, self._finish(reply), usage=usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    @staticmethod
    def _finish(reply: Reply) -> str:
        return "tool_calls" if reply.tool_calls else "stop"

    @staticmethod
    def _envelope(body: dict, kind: str) -> dict:
        return {
            "id": f"chatcmpl-fake-{time.monotonic_ns()}",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model", MODELS[0]),
        }


def _openai_usage(reply: Reply, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": reply.prompt_tokens + completion_tokens,
    }


# --- Anthropic Messages ----------------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",  # not "overloaded_error": litellm maps that text to a 500-class error
}


class AnthropicWire(Wire):
    def conversation(self, body: dict) -> Conversation:
        messages = _messages(body)
        last_user = _last_index(
            messages, lambda m: m.get("role") == "user" and not _is_tool_result(m)
        )
        since = messages[last_user + 1 :]
        results = [
            block
            for m in since
            if m.get("role") == "user" and isinstance(m.get("content"), list)
            for block in m["content"]
            if _is_tool_result_block(block)
        ]
        chars = len(_system_text(body.get("system"))) + sum(
            len(_anthropic_message_text(m)) for m in messages
        )
        return Conversation(
            user_text=content_text(messages[last_user].get("content")) if last_user >= 0 else "",
            tool_result=_tool_result_text(results[-1]) if results else None,
            prompt_chars=chars,
            tool_rounds=sum(1 for m in since if m.get("role") == "assistant" and _has_tool_use(m)),
        )

    def error_body(self, status: int, message: str) -> dict:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    async def complete(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        units = await _collect(reply)
        if _breaks(reply):
            return _break_connection(request)
        if reply.tool_calls:
            blocks = [
                {**self._tool_block(request, call), "input": call.arguments}
                for call in reply.tool_calls
            ]
        else:
            blocks = [{"type": "text", "text": _text_of(units)}]
        message = self._message(body, reply, content=blocks, stop=self._stop(reply))
        message["usage"]["output_tokens"] = len(units)
        return web.json_response(message)

    async def stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        resp = await _start_stream(request, "text/event-stream")

        async def send(event: dict) -> None:
            await _write_sse(resp, event, event_name=event["type"])

        async def start(index: int, block: dict) -> None:
            await send({"type": "content_block_start", "index": index, "content_block": block})

        await send({"type": "message_start", "message": self._message(body, reply, [], None)})
        opened = None  # the index of the content block open now
        if not reply.tool_calls:
            opened = 0
            await start(0, {"type": "text", "text": ""})
        emitted = 0
        async for call, unit in _paced(reply):
            if call is None:
                delta = {"type": "text_delta", "text": unit}
            else:
                if call != opened:
                    if opened is not None:
                        await send({"type": "content_block_stop", "index": opened})
                    opened = call
                    await start(call, self._tool_block(request, reply.tool_calls[call]))
                delta = {"type": "input_json_delta", "partial_json": unit}
            await send({"type": "content_block_delta", "index": opened, "delta": delta})
            emitted += 1
        if _breaks(reply):
            return _break_connection(request)
        if opened is not None:
            await send({"type": "content_block_stop", "index": opened})
        await send(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop(reply), "stop_sequence": None},
                "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": emitted},
            }
        )
        await send({"type": "message_stop"})
        await resp.write_eof()
        return resp

    @staticmethod
    def _stop(reply: Reply) -> str:
        return "tool_use" if reply.tool_calls else "end_turn"

    @staticmethod
    def _tool_block(request: web.Request, call: ToolCall) -> dict:
        return {"type": "tool_use", "id": _call_id(request), "name": call.name, "input": {}}

    @staticmethod
    def _message(body: dict, reply: Reply, content: list, stop: str | None) -> dict:
        return {
            "id": f"msg_fake_{time.monotonic_ns()}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", MODELS[0]),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": 0},
        }


def _has_tool_use(message: dict) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_use" for block in content
    )


def _is_tool_result_block(block: object) -> bool:
    return isinstance(block, dict) and block.get("type") == "tool_result"


def _is_tool_result(message: dict) -> bool:
    """A user message that carries tool results and no text of its own."""
    content = message.get("content")
    if not isinstance(content, list) or not any(map(_is_tool_result_block, content)):
        return False
    return not content_text(content).strip()


def _tool_result_text(block: dict) -> str:
    return content_text(block.get("content"))


def _system_text(system: object) -> str:
    return content_text(system)


def _anthropic_message_text(message: dict) -> str:
    content = message.get("content")
    results = content if isinstance(content, list) else []
    tool_text = "".join(_tool_result_text(b) for b in results if _is_tool_result_block(b))
    return content_text(content) + tool_text


# --- Ollama chat -----------------------------------------------------------------------------


class OllamaWire(Wire):
    def conversation(self, body: dict) -> Conversation:
        return _role_based_conversation(_messages(body))

    def wants_stream(self, body: dict) -> bool:
        return body.get("stream", True) is not False  # Ollama streams unless told not to

    def error_body(self, status: int, message: str) -> dict:
        return {"error": message}

    async def complete(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        units = await _collect(reply)
        if _breaks(reply):
            return _break_connection(request)
        message = self._message(_text_of(units), reply.tool_calls)
        return web.json_response(self._final(body, reply, message, len(units)))

    async def stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        resp = await _start_stream(request, "application/x-ndjson")
        # Ollama sends a tool call whole, as one object, once the model has finished it.
        pieces_left = [len(tool_argument_pieces(call.arguments)) for call in reply.tool_calls]
        emitted = 0
        async for call, unit in _paced(reply):
            emitted += 1
            if call is None:
                await _write_ndjson(resp, self._chunk(body, self._message(unit)))
                continue
            pieces_left[call] -= 1
            if not pieces_left[call]:
                message = self._message("", reply.tool_calls[call : call + 1])
                await _write_ndjson(resp, self._chunk(body, message))
        if _breaks(reply):
            return _break_connection(request)
        await _write_ndjson(resp, self._final(body, reply, self._message(""), emitted))
        await resp.write_eof()
        return resp

    @staticmethod
    def _message(content: str, calls: tuple[ToolCall, ...] = ()) -> dict:
        message: dict = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [
                {"function": {"name": call.name, "arguments": call.arguments}} for call in calls
            ]
        return message

    @staticmethod
    def _chunk(body: dict, message: dict) -> dict:
        return {
            "model": body.get("model", MODELS[0]),
            "created_at": _iso_now(),
            "message": message,
            "done": False,
        }

    @classmethod
    def _final(cls, body: dict, reply: Reply, message: dict, emitted: int) -> dict:
        return {
            **cls._chunk(body, message),
            "done": True,
            "done_reason": "stop",
            "total_duration": 0,
            "load_duration": 0,
            "prompt_eval_count": reply.prompt_tokens,
            "prompt_eval_duration": 0,
            "eval_count": emitted,
            "eval_duration": 0,
        }


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- model listings --------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    # OpenAI and Anthropic share the path /v1/models; each entry carries both shapes' fields.
    data = [
        {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "tandem-fakellm",
            "type": "model",
            "display_name": f"Fake {name}",
            "created_at": "2024-01-01T00:00:00Z",
        }
        for name in MODELS
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": MODELS[0],
            "last_id": MODELS[-1],
        }
    )


async def ollama_tags(request: web.Request) -> web.Response:
    models = [
        {
            "name": f"{name}:latest",
            "model": f"{name}:latest",
            "modified_at": "2024-01-01T00:00:00Z",
            "size": 0,
            "digest": "0" * 64,
            "details": _OLLAMA_DETAILS,
        }
        for name in MODELS
    ]
    return web.json_response({"models": models})


async def ollama_show(request: web.Request) -> web.Response:
    # litellm asks /api/show for the context length and whether the template mentions tools.
    return web.json_response(
        {
            "modelfile": "",
            "parameters": "",
            "template": "{{ if .Tools }}{{ .Tools }}{{ end }}{{ .Prompt }}",
            "details": _OLLAMA_DETAILS,
            "model_info": {"general.architecture": "fake", "fake.context_length": 32768},
            "capabilities": ["completion", "tools"],
        }
    )


_OLLAMA_DETAILS = {
    "format": "gguf",
    "family": "fake",
    "families": ["fake"],
    "parameter_size": "0B",
    "quantization_level": "none",
}


# --- writing helpers -------------------------------------------------------------------------


async def _start_stream(request: web.Request, content_type: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    await resp.prepare(request)
    return resp


async def _write_sse(resp: web.StreamResponse, data: dict, event_name: str | None = None) -> None:
    head = f"event: {event_name}\n" if event_name else ""
    await resp.write(f"{head}data: {json.dumps(data, separators=_COMPACT)}\n\n".encode())


async def _write_ndjson(resp: web.StreamResponse, data: dict) -> None:
    await resp.write(json.dumps(data, separators=_COMPACT).encode() + b"\n")
