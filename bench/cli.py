#!/usr/bin/env python
"""What the command-line client adds per delta over reading the event stream raw.

    .venv/bin/python bench/cli.py [--deltas 2000] [--interval-ms 2] [--repeat 3] [--json FILE]

See docs/benchmarks.md ("Command-line client") for what it measured. The goal (issue 18): the
CLI adds at most 5 ms per delta.

A server subprocess (this file with --serve, the standard library's HTTP server) answers
GET /api/v1/conversations/<id>/events with the frames api/stream.py writes — ``retry``, a
``snapshot``, then ``--deltas`` ``delta`` events one every ``--interval-ms``, then
``run.completed`` — each delta carrying, besides run/seq/text, ``t``: the server's
CLOCK_MONOTONIC (system-wide, so comparable across processes) just before it is written.

Then, in this process, for each way of reading it, ``--repeat`` times in turn:

- **raw**: httpx streaming the response, lines split, ``data:`` parsed as JSON — the least any
  client does. The receive time of a delta is taken once its JSON is parsed.
- **cli plain / json / rich**: the CLI's own path, ``tandem_cli.api.EventStream`` (SSE parsing,
  Last-Event-ID bookkeeping) into ``tandem_cli.follow.Turn`` (dedup by seq, tool/approval
  dispatch) into each renderer — plain text to /dev/null, JSON lines to /dev/null, rich to a
  100-column terminal Console (Live Markdown, refreshing 10 times a second on its own thread,
  as on a real terminal). A delta's receive time is taken after the renderer returns.

Per delta: latency = receive − emit. Reported: p50, p99 and mean of each way, the CLI's added
latency (each minus raw's; the mean is the goal's figure, "per delta"), and the process CPU
time per delta.
The server is not the client's: its cost is in neither figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))

GOAL_MS = 5.0
RUN = "00000000-0000-4000-8000-000000000001"
CONVERSATION = "00000000-0000-4000-8000-000000000002"
WORDS = ["alpha ", "bravo ", "charlie ", "`delta` ", "**echo** ", "foxtrot\n\n"]


# --- The server (a subprocess) -----------------------------------------------------------------


def frame(event: str, payload: dict, event_id: str) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n".encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes
    deltas = 0
    interval = 0.0

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        out = self.wfile
        out.write(b"retry: 2000\n\n")
        out.write(frame("snapshot", {"runs": []}, "1-0"))
        out.flush()
        text = []
        start = time.monotonic()
        for seq in range(1, self.deltas + 1):
            # Paced on a schedule, not by sleeping after each write: a late write doesn't
            # push the rest back.
            delay = start + seq * self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            piece = WORDS[seq % len(WORDS)]
            text.append(piece)
            payload = {"run": RUN, "seq": seq, "text": piece, "t": time.monotonic()}
            out.write(frame("delta", payload, f"{seq + 1}-0"))
            out.flush()
        message = {"id": RUN, "role": "assistant", "author": None, "content": "".join(text)}
        done = {"run": RUN, "message": message, "error": ""}
        out.write(frame("run.completed", done, f"{self.deltas + 2}-0"))
        out.flush()


def serve(port: int, deltas: int, interval_ms: float) -> None:
    Handler.deltas = deltas
    Handler.interval = interval_ms / 1000
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


# --- The clients ---------------------------------------------------------------------------------


def raw(url: str) -> tuple[list[float], float]:
    import httpx

    latencies = []
    cpu = time.process_time()
    path = f"{url}/api/v1/conversations/{CONVERSATION}/events"
    with (
        httpx.Client(timeout=60) as client,
        client.stream("GET", path, headers={"Authorization": "Bearer x"}) as response,
    ):
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[7:]
            elif line.startswith("data:"):
                data = json.loads(line[6:])
                if event == "delta":
                    latencies.append(time.monotonic() - data["t"])
                elif event == "run.completed":
                    break
    return latencies, time.process_time() - cpu


def cli(url: str, mode: str) -> tuple[list[float], float]:
    from tandem_cli import output
    from tandem_cli.api import Api
    from tandem_cli.follow import Turn, follow

    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    if mode == "plain":
        inner: output.Renderer = output.PlainRenderer(out=sink, err=sink)
    elif mode == "json":
        inner = output.JsonRenderer(out=sink)
    else:
        from rich.console import Console

        console = Console(file=io.StringIO(), force_terminal=True, width=100, height=40)
        inner = output.RichRenderer(console=console)
        inner.err = console

    latencies: list[float] = []
    emitted: list[float] = []

    class Timed(type(inner)):  # type: ignore[misc]
        def event(self, event) -> None:
            if event.event == "delta":
                emitted.append(event.data["t"])
            super().event(event)

        def text(self, chunk: str) -> None:
            super().text(chunk)
            if len(latencies) < len(emitted):
                latencies.append(time.monotonic() - emitted[len(latencies)])

    inner.__class__ = Timed
    api = Api(url, "tdm_bench")
    cpu = time.process_time()
    try:
        stream = api.events(CONVERSATION)
        turn = Turn(api, CONVERSATION, RUN, inner, interactive=False)
        result = follow(stream, turn)
    finally:
        api.close()
        sink.close()
    assert result.status == "succeeded" and result.gaps == 0, result
    return latencies, time.process_time() - cpu


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=2000)
    parser.add_argument("--interval-ms", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.deltas, args.interval_ms)
        return 0

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--deltas", str(args.deltas),
         "--interval-ms", str(args.interval_ms)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}"
        ways = ["raw", "plain", "json", "rich"]
        samples: dict[str, list[float]] = {way: [] for way in ways}
        cpu: dict[str, float] = dict.fromkeys(ways, 0.0)
        for _ in range(args.repeat):
            for way in ways:  # interleaved: a busy moment of the machine hits every way
                got, spent = raw(url) if way == "raw" else cli(url, way)
                assert len(got) == args.deltas, (way, len(got))
                samples[way] += got
                cpu[way] += spent
    finally:
        server.terminate()
        server.wait(10)

    n = args.deltas * args.repeat
    report = {}
    print(
        f"{args.deltas} deltas, one every {args.interval_ms} ms, x{args.repeat}; latency = "
        "receive (after rendering) - emit, in ms"
    )
    print(
        f"{'way':8} {'p50':>8} {'p99':>8} {'mean':>8} {'added p50':>10} {'added p99':>10} "
        f"{'added mean':>10} {'cpu/delta':>10}"
    )
    base50, base99 = percentile(samples["raw"], 50), percentile(samples["raw"], 99)
    base_mean = statistics.fmean(samples["raw"])
    for way in ways:
        p50, p99 = percentile(samples[way], 50), percentile(samples[way], 99)
        row = {
            "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000,
            "added_p50_ms": (p50 - base50) * 1000,
            "added_p99_ms": (p99 - base99) * 1000,
            "cpu_per_delta_ms": cpu[way] / n * 1000,
            "mean_ms": statistics.fmean(samples[way]) * 1000,
            "added_mean_ms": (statistics.fmean(samples[way]) - base_mean) * 1000,
        }
        report[way] = row
        print(
            f"{way:8} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} {row['mean_ms']:8.3f} "
            f"{row['added_p50_ms']:10.3f} {row['added_p99_ms']:10.3f} "
            f"{row['added_mean_ms']:10.3f} {row['cpu_per_delta_ms']:10.3f}"
        )
    worst = max(report[w]["added_mean_ms"] for w in ways if w != "raw")
    worst_cpu = max(report[w]["cpu_per_delta_ms"] - report["raw"]["cpu_per_delta_ms"]
                    for w in ways if w != "raw")  # fmt: skip
    verdict = "met" if worst <= GOAL_MS and worst_cpu <= GOAL_MS else "NOT met"
    print(
        f"CLI adds at most {worst:.3f} ms per delta (mean latency) and {worst_cpu:.3f} ms CPU per "
        f"delta over raw SSE reading: goal ≤ {GOAL_MS:.0f} ms {verdict}."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
