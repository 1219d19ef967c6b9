#!/usr/bin/env python
"""The web process's cost of one delta for one viewer, alone (issue 14).

    .venv/bin/python bench/fanout.py [--conversations 10] [--deltas 300] [--interval-ms 10]
        [--viewers ws,sse] [--repeat 3] [--port-base PORT] [--redis-url URL] [--db NAME]

bench/stream.py measures whole replies: a word's CPU there is spread over the worker, Redis and
Daphne, and a reply's fixed cost (the POST, the claim, the save) is in it too. This bench keeps
only the path a delta takes through the web process. It starts ``python -m config.serve`` alone
(no worker, no provider), opens K conversations each watched by the chosen viewers (the API's
event stream with a key, a browser's WebSocket with a session cookie), and publishes deltas
itself through production's publisher (assistant/events.DeltaBatcher: the same Lua script, the
same event log entry and PUBLISH), one per conversation every --interval-ms, each carrying its
publish time. Figures, per viewer kind, one kind at a time:

- *web CPU per delta per viewer* (µs): Daphne's utime + stime over the publishing, minus what it
  spends idle over as long a time (measured just before), divided by deltas × viewers;
- *latency* p50 / p99 (ms): receive time - publish time, every delta;
- *frames*: how many frames carried them (a WebSocket merges the deltas that waited for it).

Run it on a quiet machine: the CPU figure is robust to load, the latency is not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stream import (  # noqa: E402  (the path above first)
    Stack,
    api_key,
    django_setup,
    make_conversations,
    make_user_and_team,
    migrate,
    pct,
    proc_cpu,
    recreate_database,
    session_cookie,
    stack_env,
    wait_for_answer,
)


async def open_ws(base: str, port: int, conversation, cookie: str):
    import websockets

    ws = await websockets.connect(
        f"ws://127.0.0.1:{port}/ws/conversations/{conversation.uuid}/",
        additional_headers={"Origin": base, "Cookie": cookie},
        open_timeout=30,
        ping_interval=None,
        compression=None,
        max_queue=None,
    )
    first = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert first.get("t") == "sync", first
    return ws


async def open_sse(session, base: str, conversation, key: str):
    url = f"{base}/api/v1/conversations/{conversation.uuid}/events"
    resp = await session.get(url, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, resp.status
    event = ""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 30)
        if line.startswith(b"event: "):
            event = line[7:].strip().decode()
        elif line == b"\n" and event == "snapshot":
            return resp


async def read_ws(ws, run_id: str, last: int, got: list) -> None:
    async for raw in ws:
        now = time.time()
        frame = json.loads(raw)
        if frame.get("t") != "d" or frame.get("r") != run_id:
            continue
        got.append((now, frame.get("f", frame["s"]), frame["s"], frame["x"]))
        if frame["s"] >= last:
            return


async def read_sse(resp, run_id: str, last: int, got: list) -> None:
    event = ""
    async for line in resp.content:
        if line.startswith(b"event: "):
            event = line[7:].strip().decode()
        elif line.startswith(b"data: ") and event == "delta":
            now = time.time()
            data = json.loads(line[6:])
            if data.get("run") != run_id:
                continue
            got.append((now, data["seq"], data["seq"], data["text"]))
            if data["seq"] >= last:
                return


async def one_round(args, stack: Stack, kind: str, conversations, cookie: str, key: str) -> dict:
    import aiohttp

    from assistant import events

    daphne = stack.procs["daphne"].pid
    run_ids = [str(uuid.uuid4()) for _ in conversations]
    got: list[list] = [[] for _ in conversations]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        viewers = []
        for conversation in conversations:
            if kind == "ws":
                viewers.append(await open_ws(stack.base_url, stack.web_port, conversation, cookie))
            else:
                viewers.append(await open_sse(session, stack.base_url, conversation, key))
        # Idle cost over as long as the publishing will take (LayerWatch pings, heartbeats).
        span = args.deltas * args.interval_ms / 1000
        await asyncio.sleep(0.5)
        idle0 = proc_cpu(daphne)
        await asyncio.sleep(span)
        idle = proc_cpu(daphne) - idle0
        readers = []
        for viewer, run_id, sink in zip(viewers, run_ids, got, strict=True):
            read = read_ws if kind == "ws" else read_sse
            readers.append(asyncio.create_task(read(viewer, run_id, args.deltas, sink)))
        batcher = events.DeltaBatcher.for_this_loop()
        cpu0, began = proc_cpu(daphne), time.monotonic()
        for seq in range(1, args.deltas + 1):
            tick = time.monotonic()
            for conversation, run_id in zip(conversations, run_ids, strict=True):
                batcher.add(str(conversation.uuid), run_id, seq, f"{time.time():.6f} ")
            await asyncio.sleep(max(0.0, args.interval_ms / 1000 - (time.monotonic() - tick)))
        try:
            await asyncio.wait_for(asyncio.gather(*readers), 60)
        finally:
            for task in readers:
                task.cancel()
        busy = proc_cpu(daphne) - cpu0
        wall = time.monotonic() - began
        for viewer in viewers:
            if kind == "ws":
                await viewer.close()
            else:
                viewer.close()
    idle_share = idle * wall / span if span else 0.0
    count = args.deltas * len(conversations)
    latencies: list[float] = []
    frames = 0
    for sink in got:
        frames += len(sink)
        for received, _first, _last, text in sink:
            for stamp in text.split():
                latencies.append((received - float(stamp)) * 1000)
    return {
        "kind": kind,
        "deltas": count,
        "received": len(latencies),
        "frames": frames,
        "cpu_us": (busy - idle_share) / count * 1e6,
        "idle_s": idle_share,
        "p50": pct(latencies, 50),
        "p99": pct(latencies, 99),
        "load": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--deltas", type=int, default=300, help="per conversation")
    parser.add_argument("--interval-ms", type=float, default=10)
    parser.add_argument("--viewers", default="ws,sse")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=8630)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/52")
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="tandem_bench_fanout")
    args = parser.parse_args()

    logdir = Path(tempfile.mkdtemp(prefix="tandem-fanout-"))
    env = stack_env(args.pg_url, args.db, args.redis_url, logdir)
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    recreate_database(args.pg_url, args.db)
    stack = Stack(env=env, web_port=args.port_base, llm_port=args.port_base + 1, logdir=logdir)
    try:
        migrate(env)
        web = stack.spawn(
            "daphne", [sys.executable, "-m", "config.serve", "-b", "127.0.0.1",
                       "-p", str(stack.web_port)],
        )  # fmt: skip
        wait_for_answer(f"{stack.base_url}/healthz", web, "Daphne")
        django_setup(env)
        user, team = make_user_and_team()
        cookie, key = session_cookie(user), api_key(user, team)
        rows = []
        for round_no in range(args.repeat):
            for kind in args.viewers.split(","):
                conversations = make_conversations(
                    team, user, args.conversations, f"{kind} {round_no}"
                )
                row = asyncio.run(one_round(args, stack, kind, conversations, cookie, key))
                rows.append(row)
                print(
                    f"{kind:3} K={args.conversations} round {round_no + 1}: "
                    f"{row['cpu_us']:.0f} us web CPU per delta per viewer; latency p50/p99 "
                    f"{row['p50']:.2f}/{row['p99']:.2f} ms; {row['received']}/{row['deltas']} "
                    f"deltas in {row['frames']} frames; load {row['load']:.2f}",
                    flush=True,
                )
        for kind in args.viewers.split(","):
            mine = [r for r in rows if r["kind"] == kind]
            print(
                f"median {kind}: {statistics.median(r['cpu_us'] for r in mine):.0f} us per delta "
                f"per viewer, p50 {statistics.median(r['p50'] for r in mine):.2f} ms, "
                f"p99 {statistics.median(r['p99'] for r in mine):.2f} ms"
            )
    finally:
        stack.stop()
        recreate_database(args.pg_url, args.db, drop_only=True)
        redis.Redis.from_url(args.redis_url).flushdb()
    return 0


if __name__ == "__main__":
    sys.exit(main())
