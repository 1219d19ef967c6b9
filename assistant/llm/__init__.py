"""The LLM gateway: the only code that calls litellm.

``stream_chat`` yields text pieces as the provider sends them, then one ``ToolCallRequest`` per
tool call the model made, and ends with one ``Usage``. Provider failures become ``LLMError``
with a message in words for the conversation; failures before the first token (of text or of
a tool call) are retried, with backoff, honouring Retry-After; failures after it are not,
because a retry would repeat text the team has already seen. Tool calls are handed out only
once the stream is complete, so a call cut off half-way is never run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

from . import direct

if TYPE_CHECKING:
    from accounts.models import Team

# litellm otherwise fetches its price map over the network at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

DEMO_LABEL = "Demo model (scripted, not AI)"
MAX_RETRY_AFTER_SECONDS = 10.0


@dataclass(frozen=True)
class LLMConfig:
    model: str
    api_base: str = ""
    api_key: str = ""
    temperature: float | None = None
    is_demo: bool = False
    # The operator's own base (LLM_API_BASE) is trusted; a team's is checked before every call
    # (llm/bases.py).
    trusted: bool = False

    @property
    def label(self) -> str:
        return DEMO_LABEL if self.is_demo else self.model


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: int | None = None
    latency_ms: int = 0
    attempts: int = 1


@dataclass(frozen=True)
class ToolCallRequest:
    """One tool call the model asked for, complete."""

    id: str  # the provider's call id; generated ("call_…") where the provider gives none
    name: str
    arguments: str  # the JSON text of the arguments as the model sent it ("{}" when empty)


class LLMError(Exception):
    def __init__(
        self,
        message: str,
        *,
        code: str,
        retryable: bool = False,
        retry_after: str | float | None = None,  # seconds, as the provider's header gave it
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


def site_config() -> LLMConfig:
    if not settings.LLM_MODEL:
        return LLMConfig(model="openai/demo", api_key="demo", is_demo=True, trusted=True)
    return LLMConfig(
        model=settings.LLM_MODEL,
        api_base=settings.LLM_API_BASE,
        api_key=settings.LLM_API_KEY,
        trusted=True,
    )


def config_for_team(team: Team) -> LLMConfig:
    """The team's override where set, the site default otherwise."""
    site = site_config()
    if not team.llm_model:
        if team.llm_temperature is None:
            return site
        return dataclasses.replace(site, temperature=team.llm_temperature)
    return LLMConfig(
        model=team.llm_model,
        api_base=team.llm_api_base,
        api_key=team.llm_api_key,
        temperature=team.llm_temperature,
    )


async def _call_kwargs(config: LLMConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": config.model,
        "timeout": settings.LLM_TIMEOUT,
        "num_retries": 0,
    }
    if config.is_demo:
        from .demo import demo_api_base

        kwargs["api_base"] = await demo_api_base()
    elif config.api_base:
        if not config.trusted:
            from .bases import BaseRefused, check_before_call

            try:
                await check_before_call(config.api_base)
            except BaseRefused as exc:
                raise LLMError(str(exc), code="base_refused") from exc
        kwargs["api_base"] = config.api_base
    if config.api_key:
        kwargs["api_key"] = config.api_key
    if config.temperature is not None:
        kwargs["temperature"] = config.temperature
    return kwargs


async def stream_chat(
    config: LLMConfig, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> AsyncIterator[str | ToolCallRequest | Usage]:
    """Yield text pieces, then a ToolCallRequest per tool call, then one Usage. Raises LLMError.

    ``messages`` and ``tools`` are in OpenAI's chat format (assistant messages may carry
    ``tool_calls``, results are ``role: tool`` messages); each client translates them.
    """
    attempt = 0
    while True:
        attempt += 1
        started = time.monotonic()
        yielded = False
        try:
            async for item in _stream_once(config, messages, tools, started):
                if isinstance(item, Usage):
                    item.attempts = attempt
                else:
                    yielded = True
                yield item
            return
        except LLMError as exc:
            if yielded or not exc.retryable or attempt > settings.LLM_MAX_RETRIES:
                raise
            await asyncio.sleep(_backoff(attempt, exc.retry_after))


def _backoff(attempt: int, retry_after: str | float | None) -> float:
    if retry_after:
        try:
            return min(float(retry_after), MAX_RETRY_AFTER_SECONDS)
        except (TypeError, ValueError):
            pass
    return 0.5 * 2.0 ** (attempt - 1)  # float **: int ** int may be a float, typed Any


def warm_up() -> None:
    """Import litellm ahead of the first reply (servers call this in a background thread)."""
    _litellm()


def _litellm() -> ModuleType:
    import litellm

    litellm.suppress_debug_info = True  # no feedback banner printed on every provider error
    return litellm


async def _stream_once(
    config: LLMConfig,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    started: float,
) -> AsyncIterator[str | ToolCallRequest | Usage]:
    usage = Usage()
    finished = False
    text_seen = False
    calls = _ToolCalls()
    try:
        async for piece in await _pieces(config, messages, tools):
            if piece.prompt_tokens is not None:
                usage.prompt_tokens = piece.prompt_tokens
            if piece.completion_tokens is not None:
                usage.completion_tokens = piece.completion_tokens
            if piece.text or piece.tool_fragments:
                if usage.ttft_ms is None:
                    usage.ttft_ms = int((time.monotonic() - started) * 1000)
                for fragment in piece.tool_fragments:
                    calls.add(fragment)
            if piece.text:
                text_seen = True
                yield piece.text
            finished = finished or piece.finished
    except LLMError:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # providers fail in many ways; translate them all to words
        if usage.ttft_ms is not None:
            raise LLMError(
                "The connection to the model provider broke off in the middle of the reply. "
                + _broken_advice(text_seen),
                code="stream_broken",
            ) from exc
        raise translate_error(exc, config) from exc
    if not finished:
        raise LLMError(
            "The model provider's stream ended before the reply was complete. "
            + _broken_advice(text_seen),
            code="stream_broken",
            retryable=usage.ttft_ms is None,
        )
    for call in calls.requests():
        yield call
    usage.latency_ms = int((time.monotonic() - started) * 1000)
    yield usage


def _broken_advice(text_seen: bool) -> str:
    if text_seen:
        return "The part received so far is kept; press Retry for a complete reply."
    return "It was in the middle of a tool call, which was not run; press Retry."


class _ToolCalls:
    """Tool calls put together from their streamed fragments, in the order they began."""

    def __init__(self) -> None:
        self._calls: list[direct.ToolFragment] = []
        self._by_index: dict[int, direct.ToolFragment] = {}

    def add(self, fragment: direct.ToolFragment) -> None:
        call = self._by_index.get(fragment.index)
        if call is None:
            call = direct.ToolFragment(fragment.index)
            self._calls.append(call)
            self._by_index[fragment.index] = call
        call.id = call.id or fragment.id
        call.name = call.name or fragment.name
        call.arguments += fragment.arguments

    def requests(self) -> list[ToolCallRequest]:
        return [
            ToolCallRequest(
                id=call.id or f"call_{uuid.uuid4().hex[:24]}",
                name=call.name,
                arguments=call.arguments if call.arguments.strip() else "{}",
            )
            for call in self._calls
        ]


async def _pieces(
    config: LLMConfig, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> AsyncIterator[direct.Piece]:
    """The provider's stream as Pieces: the lean client where it speaks the wire format,
    litellm for everything else."""
    kwargs = await _call_kwargs(config)
    if settings.LLM_STREAM_CLIENT == "direct" and direct.supports(config.model):
        return direct.pieces(
            model=config.model,
            api_base=kwargs.get("api_base", ""),
            api_key=config.api_key,
            temperature=config.temperature,
            messages=messages,
            tools=tools,
            check_addresses=not config.trusted and not config.is_demo,
        )
    if tools:
        kwargs["tools"] = tools
        # With tools, litellm's completion() first imports its MCP gateway, to see whether a
        # tool is a litellm-proxy MCP server ({"type": "mcp"}); that import needs the optional
        # `mcp` package and raises ModuleNotFoundError without it. Function tools never need
        # the gateway, and this is the flag litellm sets on its own inner calls to skip it
        # (it is on litellm's list of internal parameters never sent to a provider).
        kwargs["_skip_mcp_handler"] = True
    whole_calls = config.model.split("/", 1)[0] in ("ollama", "ollama_chat")
    return _litellm_pieces(kwargs, _no_blank_text_beside_calls(messages), whole_calls)


def _no_blank_text_beside_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An assistant tool-call message with content "" as content None: for Anthropic, litellm
    replaces blank text with "[System: Empty message content sanitised to satisfy protocol]",
    words the model would then read as its own; None it leaves out."""
    if not any(m.get("tool_calls") and m.get("content") == "" for m in messages):
        return messages
    return [
        {**m, "content": None} if m.get("tool_calls") and m.get("content") == "" else m
        for m in messages
    ]


async def _litellm_pieces(
    kwargs: dict[str, Any], messages: list[dict[str, Any]], whole_calls: bool
) -> AsyncIterator[direct.Piece]:
    # The first import of litellm takes seconds; never on the event loop every reply shares.
    litellm = await asyncio.to_thread(_litellm)
    response = await litellm.acompletion(
        messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    calls_seen = 0
    async for chunk in response:
        piece = direct.Piece()
        chunk_usage = getattr(chunk, "usage", None)
        if chunk_usage:
            piece.prompt_tokens = chunk_usage.prompt_tokens or 0
            piece.completion_tokens = chunk_usage.completion_tokens or 0
        if chunk.choices:
            choice = chunk.choices[0]
            delta = choice.delta
            piece.text = (delta.content if delta else None) or ""
            if delta is not None and getattr(delta, "tool_calls", None):
                # Ollama sends every call whole, but litellm numbers the calls of each chunk
                # from 0 (and gives a call without arguments no id to tell it apart by), so
                # calls sent in separate chunks would merge: number them across the stream.
                first = calls_seen if whole_calls else None
                piece.tool_fragments = _litellm_fragments(delta.tool_calls, first)
                calls_seen += len(piece.tool_fragments)
            piece.finished = bool(choice.finish_reason)
        yield piece


def _litellm_fragments(
    tool_calls: list[Any],  # litellm's objects
    first_index: int | None,
) -> tuple[direct.ToolFragment, ...]:
    fragments = []
    for position, call in enumerate(tool_calls):
        function = getattr(call, "function", None)
        arguments = getattr(function, "arguments", None) or ""
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        index = getattr(call, "index", None)
        if first_index is not None or index is None:
            index = (first_index or 0) + position
        fragments.append(
            direct.ToolFragment(
                index=index,
                id=getattr(call, "id", None) or "",
                name=getattr(function, "name", None) or "",
                arguments=arguments,
            )
        )
    return tuple(fragments)


class _NoLitellm:
    """Stands in for litellm's exception classes when it was never imported (the lean
    client's errors need no import that takes seconds)."""

    class _Never(Exception):
        pass

    AuthenticationError = NotFoundError = RateLimitError = Timeout = BadRequestError = _Never


def translate_error(exc: Exception, config: LLMConfig) -> LLMError:
    from .bases import BaseRefused

    refused = _found_in_chain(exc, BaseRefused)
    if refused is not None:
        return LLMError(str(refused), code="base_refused")
    litellm = sys.modules.get("litellm") or _NoLitellm
    status = getattr(exc, "status_code", None)
    where = config.api_base or "the provider"
    if isinstance(exc, litellm.Timeout) or _in_chain(exc, _is_timeout):
        return LLMError(
            f"The model provider did not answer within {settings.LLM_TIMEOUT} seconds.",
            code="timeout",
            retryable=True,
        )
    if _in_chain(exc, _is_missing_key):
        # The client refused to call without a key (litellm reports it as a 500 or a 401).
        return LLMError(
            "No API key is set for this model provider. A team admin can set one in Team settings.",
            code="auth",
        )
    if _in_chain(exc, _is_refused):
        return LLMError(
            f"Nothing answered at {_host_port(config, exc)}: the connection was refused. Is "
            "the model server running, and is the address right?",
            code="connection",
            retryable=True,
        )
    if _in_chain(exc, _is_unknown_host):
        return LLMError(
            f"The model provider's host name {_host_port(config, exc)} could not be found "
            "(DNS). Check the API base address.",
            code="connection",
            retryable=True,
        )
    if isinstance(exc, litellm.AuthenticationError) or status in (401, 403):
        return LLMError(
            "The model provider rejected the API key. A team admin can set the key in "
            "Team settings.",
            code="auth",
        )
    if isinstance(exc, litellm.NotFoundError) or status == 404:
        return LLMError(f"The model '{config.model}' was not found at {where}.", code="not_found")
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        retry_after = getattr(exc, "retry_after", None)
        response = getattr(exc, "response", None)
        if response is not None and getattr(response, "headers", None):
            retry_after = response.headers.get("retry-after")
        return LLMError(
            "The model provider is rate limiting requests (429). Try again in a moment.",
            code="rate_limited",
            retryable=True,
            retry_after=retry_after,
        )
    if isinstance(exc, litellm.BadRequestError) or status == 400:
        return LLMError(
            f"The model provider refused the request: {_short(exc)}", code="bad_request"
        )
    if _in_chain(exc, _is_connection_error):
        return LLMError(
            f"Could not reach the model provider at {where}, or it broke off the "
            f"connection: {_short(exc)}",
            code="connection",
            retryable=True,
        )
    if status is not None and int(status) >= 500:
        return LLMError(
            f"The model provider had an internal error ({status}).",
            code="provider_error",
            retryable=True,
        )
    return LLMError(f"The model call failed: {_short(exc)}", code="error", retryable=True)


CONNECTION_ERRORS = {
    "ConnectError",
    "APIConnectionError",
    "ClientConnectorError",
    "ClientConnectionError",
    "ServerDisconnectedError",
    "ClientOSError",
}


def _is_connection_error(exc: BaseException) -> bool:
    """A refused or dropped connection, by type or by the words litellm wraps it in (it
    reports a refused connection as a 500 "Connection error." for some providers)."""
    text = str(exc)
    return (
        isinstance(exc, ConnectionError)
        or type(exc).__name__ in CONNECTION_ERRORS
        or "Connection error" in text
        or "Cannot connect to host" in text
    )


MISSING_KEY_WORDS = ("Missing credentials", "api_key client option must be set", "API Key")


def _is_missing_key(exc: BaseException) -> bool:
    text = str(exc)
    return any(words in text for words in MISSING_KEY_WORDS) and (
        "Missing" in text or "must be set" in text or "no key" in text
    )


def _is_refused(exc: BaseException) -> bool:
    text = str(exc)
    return (
        isinstance(exc, ConnectionRefusedError)
        or "Connect call failed" in text
        or "Connection refused" in text
    )


def _is_unknown_host(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, socket.gaierror) or any(
        words in text
        for words in ("Name or service not known", "nodename nor servname", "getaddrinfo failed")
    )


def _host_port(config: LLMConfig, exc: BaseException) -> str:
    """host:port the call went to: from the configured base, else from the error's words."""
    if config.api_base:
        parts = urlsplit(config.api_base)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            return f"{parts.hostname}:{port}"
    found = re.search(r"host ([\w.\-\[\]:]+?):(\d+)", _chain_text(exc))
    return f"{found[1]}:{found[2]}" if found else "the provider's address"


def _chain_text(exc: BaseException) -> str:
    texts: list[str] = []
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return " ".join(texts)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__


def _in_chain(exc: BaseException, predicate: Callable[[BaseException], bool]) -> bool:
    """litellm wraps the real failure (a read timeout, say) in a generic 500; look beneath."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if predicate(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _found_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _short(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    for prefix in ("litellm.", "LiteLLM "):
        text = text.removeprefix(prefix)
    return text[:limit]


async def check_connection(config: LLMConfig) -> str:
    """A tiny real call, for the team settings' Test connection button."""
    litellm = await asyncio.to_thread(_litellm)

    kwargs = await _call_kwargs(config)  # refuses a base it must not call, in words
    started = time.monotonic()
    try:
        response = await litellm.acompletion(
            messages=[{"role": "user", "content": "Reply with the word OK."}],
            max_tokens=5,
            **kwargs,
        )
    except Exception as exc:
        raise translate_error(exc, config) from exc
    elapsed = int((time.monotonic() - started) * 1000)
    text = (response.choices[0].message.content or "").strip()
    return f"{config.label} answered in {elapsed} ms: “{text[:60]}”"
