"""What the fake LLM says: directive parsing and token generation (pure functions, no I/O).

The last user message scripts the reply with directive blocks, anywhere in its text:

    [[key=value key=value ...]]     several blocks allowed; later keys override earlier ones
    [[tool NAME {json arguments}]]  call tool NAME (arguments optional, default {}); several
                                    blocks are called one after another, in the order written

Keys of ``[[key=value]]`` blocks:

    tokens=N          reply with exactly ``scripted_tokens(N)``
    delay_ms=D        sleep D ms (float) before each token; default 0 when the message has any
                      directive, DEFAULT_DELAY_MS for the directive-less demo reply
    first_token_ms=F  extra sleep before the first token (time to first token)
    stamp=1           every token is replaced by ``"%.6f " % time.time()`` taken just before it
                      is written to the socket (benchmarks parse these)
    error=CODE        answer with HTTP error CODE (400..599) in the provider's error shape
    fail_times=K      with error=: fail only the first K requests carrying this exact message
                      text (counted in server memory), then answer normally
    break_after=N     send N tokens (or tool-argument pieces, counted over all the calls of
                      the reply), then drop the connection without the final chunk / [DONE]
    echo=1            reply with the message text, directives stripped, as word tokens
    parallel=1        make all the ``[[tool ...]]`` calls at once, in one reply

A block is only a directive when every ``key`` in it is one of the keys above, so ordinary
text such as a bash ``[[ $a == b ]]`` is left alone. A value that does not parse is ignored.

Tool calls are scripted as a sequence. Call k the number of tool-call rounds already in the
conversation after the last user message (assistant messages with tool calls: ``tool_calls``
in OpenAI and Ollama, ``tool_use`` blocks in Anthropic, whose tool-result-only user messages
do not count as user messages). Reply number k to the user message makes the (k+1)-th
scripted call; with ``parallel=1`` reply 0 makes all of them. The server counts nothing: a
request is answered from the messages it carries, so any client can replay any step.

What the reply contains, first rule that applies wins:

1. a scripted tool call still to make -> that call (several with ``parallel=1``), no text
2. a tool result after the last user message -> "Tool result received: <first 200 chars of
   the last tool result>"
3. ``tokens=N`` -> ``scripted_tokens(N)``
4. ``echo=1`` -> the message text, directives stripped
5. otherwise -> the demo text (``demo_text``)

Directives come from the last user message even when tool calls and results follow it, so
delays, errors, fail_times counts and break_after apply to every reply of the sequence.

Tool-call ids are ``call_<n>``, n counted per server (Anthropic and OpenAI only: Ollama's wire
format has no call ids). Ollama sends each call whole, in its own chunk, once all its argument
pieces have been paced out.

Token rule of ``scripted_tokens(n)``: token i (0-based) is ``WORDS[i % len(WORDS)]`` followed
by one space, except the last token, which has no trailing space. So
``"".join(scripted_tokens(3)) == "alpha bravo charlie"``.

Free text (echo, demo, tool result) is split by ``word_tokens``: each token is a run of
non-whitespace with the whitespace around it, so joining the tokens gives the text back.

Usage: prompt tokens = max(1, characters of all message text // 4); completion tokens = the
number of tokens (text) or argument pieces (tool calls) in the reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A word list reads better as text than as fifty one-word lines.
WORDS = tuple(
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "  # noqa: SIM905
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu apple "
    "banana cherry date elder fig grape hazel iris jasmine kale lemon mango nutmeg olive "
    "pepper quince radish sage thyme umber vanilla walnut yarrow".split()
)

DEFAULT_DELAY_MS = 15.0
TOOL_RESULT_PREVIEW = 200
TOOL_ARGUMENT_PIECES = 3

_FLAG = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "tokens": int,
    "delay_ms": float,
    "first_token_ms": float,
    "stamp": _FLAG.__getitem__,
    "error": int,
    "fail_times": int,
    "break_after": int,
    "echo": _FLAG.__getitem__,
    "parallel": _FLAG.__getitem__,
}
_BLOCK = re.compile(r"\[\[((?:\s*[a-z_]+=[^\s\]]+)+)\s*\]\]")
_TOOL_HEAD = re.compile(r"\[\[tool\s+([A-Za-z0-9_.:-]+)\s*")
_CLOSE = re.compile(r"\s*\]\]")
_WORD = re.compile(r"\s*\S+\s*")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class Script:
    """The directives found in one message (None / False = not given)."""

    tokens: int | None = None
    delay_ms: float | None = None
    first_token_ms: float = 0.0
    stamp: bool = False
    error: int | None = None
    fail_times: int | None = None
    break_after: int | None = None
    echo: bool = False
    parallel: bool = False
    tools: tuple[ToolCall, ...] = ()  # in the order written
    has_directives: bool = False


@dataclass(frozen=True)
class Conversation:
    """The provider-neutral facts about a request that decide the reply."""

    user_text: str  # text of the last user message: the directive source
    tool_result: str | None  # text of the last tool result after that message, if any
    prompt_chars: int  # characters of all message text, for the usage numbers
    tool_rounds: int = 0  # assistant tool-call messages after the last user message


@dataclass(frozen=True)
class Reply:
    tokens: tuple[str, ...]  # text tokens; empty for tool calls
    tool_calls: tuple[ToolCall, ...]
    script: Script
    fail_key: str  # what fail_times counts requests by
    prompt_tokens: int

    @property
    def delay_ms(self) -> float:
        if self.script.delay_ms is not None:
            return max(0.0, self.script.delay_ms)
        return 0.0 if self.script.has_directives else DEFAULT_DELAY_MS


def scripted_tokens(n: int) -> list[str]:
    """The exact tokens of a ``[[tokens=N]]`` reply (rule in the module docstring)."""
    return [WORDS[i % len(WORDS)] + ("" if i == n - 1 else " ") for i in range(max(0, n))]


def word_tokens(text: str) -> list[str]:
    """Split text into tokens that keep their whitespace: ``"".join(result) == text``."""
    return _WORD.findall(text)


def tool_argument_pieces(arguments: dict) -> list[str]:
    """The JSON of the arguments cut into a few pieces, as a real model streams them."""
    text = json.dumps(arguments)
    size = -(-len(text) // TOOL_ARGUMENT_PIECES)  # ceiling division
    return [text[i : i + size] for i in range(0, len(text), size)]


def parse_directives(text: str) -> tuple[Script, str]:
    """Return the script of a message and its text with the directive blocks removed."""
    values: dict[str, Any] = {}
    spans: list[tuple[int, int]] = []
    for match in _BLOCK.finditer(text):
        pairs = [item.split("=", 1) for item in match.group(1).split()]
        if all(key in _CONVERTERS for key, _ in pairs):
            values.update(_convert(pairs))
            spans.append(match.span())
    tools, tool_spans = _find_tool_calls(text)
    spans += tool_spans
    script = Script(**values, tools=tools, has_directives=bool(spans))
    return script, _remove_spans(text, spans)


def build_reply(conversation: Conversation) -> Reply:
    script, text = parse_directives(conversation.user_text)
    tool_calls = pending_tool_calls(script, conversation.tool_rounds)
    if tool_calls:
        tokens = []
    elif conversation.tool_result is not None:
        preview = conversation.tool_result[:TOOL_RESULT_PREVIEW]
        tokens = word_tokens(f"Tool result received: {preview}")
    elif script.tokens is not None:
        tokens = scripted_tokens(script.tokens)
    elif script.echo:
        tokens = word_tokens(text.strip())
    else:
        tokens = word_tokens(demo_text(text))
    return Reply(
        tokens=tuple(tokens),
        tool_calls=tool_calls,
        script=script,
        fail_key=conversation.user_text,
        prompt_tokens=max(1, conversation.prompt_chars // 4),
    )


def pending_tool_calls(script: Script, rounds: int) -> tuple[ToolCall, ...]:
    """The calls of reply number ``rounds`` after the user message (rule in the docstring)."""
    if script.parallel:
        return script.tools if rounds == 0 else ()
    return script.tools[rounds : rounds + 1]


def demo_text(user_text: str) -> str:
    """The friendly reply of the Demo model when the message has no directives."""
    snippet = " ".join(user_text.split())
    if len(snippet) > 80:
        snippet = snippet[:80] + "…"
    return (
        "Hi! I'm the **Demo model**: a scripted stand-in, not an AI. I don't understand "
        "messages, I only echo a bit of what you wrote:\n\n"
        f"> {snippet or '(an empty message)'}\n\n"
        "To work with a real model, set `LLM_MODEL`, `LLM_API_BASE` and `LLM_API_KEY` in the "
        "server's environment, or choose a provider in **Team settings**. Until then, here is "
        "a code block so you can see how code is shown:\n\n"
        "```python\n"
        "def greet(name: str) -> str:\n"
        '    return f"Hello, {name}!"\n'
        "```\n\n"
        "This reply is streamed token by token, so you can watch streaming work."
    )


def _convert(pairs: list[list[str]]) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for key, raw in pairs:
        try:
            converted[key] = _CONVERTERS[key](raw.lower())
        except (KeyError, ValueError):
            continue  # a typo in one value should not turn the whole block into text
    return converted


def _find_tool_calls(text: str) -> tuple[tuple[ToolCall, ...], list[tuple[int, int]]]:
    """Find ``[[tool NAME {json}]]`` blocks, in order.

    The JSON is read with a real decoder, not a regex, so arguments may contain ``]]``.
    """
    tools, spans = [], []
    for head in _TOOL_HEAD.finditer(text):
        arguments, end = _read_json_object(text, head.end())
        close = _CLOSE.match(text, end)
        if arguments is None or close is None:
            continue
        tools.append(ToolCall(name=head.group(1), arguments=arguments))
        spans.append((head.start(), close.end()))
    return tuple(tools), spans


def _read_json_object(text: str, start: int) -> tuple[dict | None, int]:
    if text.startswith("]]", start):
        return {}, start
    try:
        value, end = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None, start
    return (value, end) if isinstance(value, dict) else (None, start)


def _remove_spans(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + text[end:]
    return text
