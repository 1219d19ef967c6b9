"""The event stream over real HTTP from the real stack (Daphne, a Celery worker, the fake
provider): a reply streams as numbered deltas with event ids, and a client that reconnects
with Last-Event-ID gets exactly what it missed."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from django.conf import settings

from assistant.fakellm.script import scripted_tokens
from tests.api_client import make_key

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


class Stream:
    """One open event stream: events as they come, with a timeout on each."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = 15) -> dict:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> dict:
        event: dict = {}
        async for line in self.lines:
            if line == "":
                if "event" in event:
                    return event
                event = {}
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[field] = json.loads(value) if field == "data" else value
        raise EOFError("the stream ended")

    async def until(self, kinds: set[str], timeout: float = 30) -> list[dict]:
        """Events up to and including the first of one of ``kinds``."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            seen.append(event)
            if event["event"] in kinds:
                return seen


def open_stream(client: httpx.AsyncClient, conversation, key: str, last_id: str | None = None):
    headers = {"Authorization": f"Bearer {key}"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    return client.stream(
        "GET", f"/api/v1/conversations/{conversation.uuid}/events", headers=headers
    )


async def post_message(client: httpx.AsyncClient, conversation, key: str, content: str) -> dict:
    response = await client.post(
        f"/api/v1/conversations/{conversation.uuid}/messages",
        json={"content": content},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202, response.text
    return response.json()


async def wait_for_run(client: httpx.AsyncClient, run_id: str, key: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = (
            await client.get(f"/api/v1/runs/{run_id}", headers={"Authorization": f"Bearer {key}"})
        ).json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        await asyncio.sleep(0.1)
    raise TimeoutError(run)


def ids_increase(events: list[dict]) -> bool:
    ids = [tuple(int(n) for n in e["id"].split("-")) for e in events if "id" in e]
    return ids == sorted(set(ids))


def deltas(events: list[dict]) -> list[dict]:
    return [e["data"] for e in events if e["event"] == "delta"]


def client_for(stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.base_url, timeout=httpx.Timeout(30))


def test_a_reply_streams_as_deltas_with_ids(stack, team, alice, conversation):
    key = make_key(team, alice)
    expected = "".join(scripted_tokens(40))

    async def scenario():
        async with client_for(stack) as client, open_stream(client, conversation, key) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = Stream(response)
            snapshot = await stream.next()
            assert snapshot["event"] == "snapshot" and snapshot["data"] == {"runs": []}
            sent = await post_message(client, conversation, key, "Hi [[tokens=40 delay_ms=5]]")
            events = await stream.until({"run.completed", "run.failed"})
            return snapshot, sent, events

    snapshot, sent, events = asyncio.run(scenario())
    kinds = [e["event"] for e in events]
    assert (
        kinds[0] == "message.created" and kinds[1] == "run.started" and kinds[-1] == "run.completed"
    )
    assert events[0]["data"]["message"]["id"] == sent["message"]["id"]
    assert events[0]["data"]["run"]["id"] == sent["run"]["id"]
    assert all("id" in e for e in events) and ids_increase([snapshot, *events])
    got = deltas(events)
    assert [d["seq"] for d in got] == list(range(1, len(got) + 1))
    assert {d["run"] for d in got} == {sent["run"]["id"]}
    assert "".join(d["text"] for d in got) == expected
    assert events[-1]["data"]["message"]["content"] == expected


def test_reconnecting_with_last_event_id_gets_exactly_what_was_missed(
    stack, team, alice, conversation
):
    key = make_key(team, alice)
    expected = "".join(scripted_tokens(60))

    async def scenario():
        async with client_for(stack) as client:
            async with open_stream(client, conversation, key) as response:
                stream = Stream(response)
                await stream.next()  # snapshot
                sent = await post_message(client, conversation, key, "Go [[tokens=60 delay_ms=25]]")
                before = []
                while len(deltas(before)) < 3:
                    before.append(await stream.next())
            # Gone mid-reply; the reply goes on and ends meanwhile.
            run = await wait_for_run(client, sent["run"]["id"], key)
            async with open_stream(client, conversation, key, before[-1]["id"]) as response:
                assert response.status_code == 200
                after = await Stream(response).until({"run.completed"})
            # The same position again gives the same events: the log is durable.
            async with open_stream(client, conversation, key, before[-1]["id"]) as response:
                again = await Stream(response).until({"run.completed"})
            return before, after, again, run

    before, after, again, run = asyncio.run(scenario())
    assert run["status"] == "succeeded"
    assert after[0]["event"] == "delta"  # no snapshot, no reset: straight on
    assert {e["event"] for e in after} <= {"delta", "run.completed"}
    assert ids_increase(before + after)
    seqs = [d["seq"] for d in deltas(before) + deltas(after)]
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing twice
    assert "".join(d["text"] for d in deltas(before) + deltas(after)) == expected
    assert after[-1]["data"]["message"]["content"] == expected
    assert [e["id"] for e in again] == [e["id"] for e in after]


def test_joining_mid_reply_starts_from_a_snapshot(stack, team, alice, conversation):
    key = make_key(team, alice)
    expected = "".join(scripted_tokens(60))

    async def scenario():
        async with client_for(stack) as client:
            sent = await post_message(client, conversation, key, "Go [[tokens=60 delay_ms=25]]")
            # Wait until the reply is under way, then join.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                run = (
                    await client.get(
                        f"/api/v1/runs/{sent['run']['id']}",
                        headers={"Authorization": f"Bearer {key}"},
                    )
                ).json()
                if run["seq"]:
                    break
                await asyncio.sleep(0.05)
            async with open_stream(client, conversation, key) as response:
                stream = Stream(response)
                snapshot = await stream.next()
                rest = await stream.until({"run.completed"})
            return sent, snapshot, rest

    sent, snapshot, rest = asyncio.run(scenario())
    assert snapshot["event"] == "snapshot"
    (run,) = snapshot["data"]["runs"]
    assert run["id"] == sent["run"]["id"] and run["status"] == "running" and run["seq"] >= 1
    seqs = [d["seq"] for d in deltas(rest)]
    assert seqs == list(range(run["seq"] + 1, run["seq"] + 1 + len(seqs)))
    assert run["text"] + "".join(d["text"] for d in deltas(rest)) == expected


def sse_readers(client) -> int:
    """The event-stream readers on this test's Redis database (CLIENT LIST is the whole
    server's: another test process, or a bench, may have readers of its own)."""
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    return sum(
        1 for c in client.client_list() if c.get("name") == "tandem-sse" and c.get("db") == db
    )


def test_a_client_that_goes_away_frees_its_reader(stack, team, alice, conversation, redis_clean):
    key = make_key(team, alice)

    def wait_for_readers(count: int) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = sse_readers(redis_clean)
            if now == count:
                return now
            time.sleep(0.05)
        return sse_readers(redis_clean)

    start = sse_readers(redis_clean)

    async def scenario():
        async with client_for(stack) as client:
            async with open_stream(client, conversation, key) as response:
                # Held while counting: a Stream dropped at once closes its line iterator,
                # and with it the response (the client leaves).
                stream = Stream(response)
                await stream.next()
                opened = await asyncio.to_thread(wait_for_readers, start + 1)
            closed = await asyncio.to_thread(wait_for_readers, start)
            return opened, closed

    opened, closed = asyncio.run(scenario())
    assert (opened, closed) == (start + 1, start)


def test_last_event_id_in_the_query_and_a_bad_one(stack, team, alice, conversation):
    key = make_key(team, alice)

    async def scenario():
        async with client_for(stack) as client:
            headers = {"Authorization": f"Bearer {key}"}
            path = f"/api/v1/conversations/{conversation.uuid}/events"
            bad = await client.get(path, headers={**headers, "Last-Event-ID": "yesterday"})
            async with open_stream(client, conversation, key) as response:
                position = (await Stream(response).next())["id"]
            await post_message(client, conversation, key, "Hi [[tokens=3]]")
            async with client.stream(
                "GET", f"{path}?last_event_id={position}", headers=headers
            ) as response:
                events = await Stream(response).until({"run.completed"})
            return bad, events

    bad, events = asyncio.run(scenario())
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_last_event_id"
    assert events[0]["event"] == "message.created"


def test_the_rate_limit_holds_across_processes_on_the_real_server(stack, team, bob):
    """Four OS processes fire GET /me with one key at Daphne at once: exactly the limit
    (API_RATE_PER_MINUTE, 120 in the stack) is let through; the rest are 429 with
    Retry-After."""
    import subprocess
    import sys

    key = make_key(team, bob)
    limit = settings.API_RATE_PER_MINUTE
    start_at = time.time() + 2.0
    code = f"""
import sys, time, httpx
time.sleep(max(0, {start_at} - time.time()))
counts = {{}}
with httpx.Client(base_url={stack.base_url!r}, timeout=30) as client:
    for _ in range(45):
        r = client.get("/api/v1/me", headers={{"Authorization": "Bearer {key}"}})
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
        if r.status_code == 429:
            assert 1 <= int(r.headers["Retry-After"]) <= 60
print(counts.get(200, 0), counts.get(429, 0), sum(counts.values()))
"""
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [tuple(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    allowed = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    assert sum(r[2] for r in results) == 180
    assert allowed == limit, results
    assert refused == 180 - limit
