"""A Celery worker whose LLM gateway is a minimal OpenAI-compatible SSE client (an experiment).

``bench/stream.py --raw-llm`` starts the worker with this script instead of ``celery``: the same
worker, tasks and agent, but ``assistant.llm.stream_chat`` is replaced, after the worker is
ready, by a plain aiohttp + json reader of the provider's stream. It measures what the streaming
path costs without litellm and the OpenAI SDK's per-chunk objects; it is not the production path
(no retries, no error translation, OpenAI wire format only).

    python bench/rawllm_worker.py -A config worker --pool threads ...
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery.signals import worker_ready  # noqa: E402

_sessions: dict[int, object] = {}


def _session():
    import aiohttp

    loop = asyncio.get_running_loop()
    session = _sessions.get(id(loop))
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        _sessions[id(loop)] = session
    return session


async def raw_stream_chat(config, messages):
    from assistant import llm

    url = config.api_base.rstrip("/") + "/chat/completions"
    body = {
        "model": config.model.split("/", 1)[-1],
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {config.api_key}"}
    usage = llm.Usage()
    started = time.monotonic()
    async with _session().post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            raise llm.LLMError(f"provider answered {resp.status}", code="error")
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage.prompt_tokens = chunk["usage"].get("prompt_tokens") or 0
                usage.completion_tokens = chunk["usage"].get("completion_tokens") or 0
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if usage.ttft_ms is None:
                        usage.ttft_ms = int((time.monotonic() - started) * 1000)
                    yield text
    usage.latency_ms = int((time.monotonic() - started) * 1000)
    yield usage


@worker_ready.connect(weak=False)
def _patch(**kwargs) -> None:
    from assistant import llm

    llm.stream_chat = raw_stream_chat
    print("rawllm: assistant.llm.stream_chat replaced by a plain SSE reader", flush=True)


if __name__ == "__main__":
    from celery.__main__ import main

    sys.exit(main())
