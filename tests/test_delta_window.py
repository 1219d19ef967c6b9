"""Deltas are coalesced only when many replies stream at once on a worker's loop."""

from __future__ import annotations

import asyncio

import pytest

from assistant.agent import DeltaPublisher


async def _deltas_for(pieces: int, *, others: int) -> int:
    """How many deltas one reply's pieces become, sent 1 ms apart, with `others` replies
    streaming beside it on the same loop."""
    beside = [DeltaPublisher("c", f"other-{n}", 30) for n in range(others)]
    publisher = DeltaPublisher("c", "r", 30)
    for n in range(pieces):
        publisher.add(f"w{n} ")
        await asyncio.sleep(0.001)
    await publisher.close()
    for other in beside:
        await other.close()
    return publisher.seq


@pytest.fixture
def in_memory(settings):
    # The embedded path (no Redis batcher) publishes through the in-memory layer: this is
    # about the publisher's window only.
    settings.REDIS_URL = ""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.STREAM_COALESCE_ABOVE = 2


def test_a_lone_reply_sends_every_piece_at_once(in_memory):
    assert asyncio.run(_deltas_for(20, others=0)) == 20


def test_many_replies_at_once_are_coalesced(in_memory):
    assert asyncio.run(_deltas_for(20, others=2)) < 20


def test_a_stream_lost_from_redis_is_written_again_whole(settings):
    """A restarted Redis keeps no stream text: the next delta finds APPEND answering a length
    that is not what the run streamed, and the whole text is written again, so a viewer who
    resyncs gets all of it, not the deltas since the restart."""
    import uuid

    from assistant import streams

    run_id = f"lost-{uuid.uuid4().hex}"

    async def stream() -> streams.Snapshot:
        publisher = DeltaPublisher("c", run_id, 0, start_seq=2, start_text="Parked text. ")
        await streams.seed(run_id, 2, "Parked text. ")
        publisher.add("One ")
        await publisher.drain()
        await streams.async_redis().delete(f"tandem:run:{run_id}:text")  # Redis "restarted"
        publisher.add("two ")
        publisher.flush()
        publisher.add("three.")
        await publisher.close()
        return await streams.snapshot(run_id)

    snap = asyncio.run(stream())
    assert snap == streams.Snapshot(5, "Parked text. One two three.")


def test_the_delta_script_survives_a_lost_script_cache_and_a_killed_connection(settings):
    """The batches go out on a connection of their own (events.ScriptWire). After Redis forgot
    its scripts (SCRIPT FLUSH, as a restart does) the batch runs the script in full; after its
    connection was killed the batch goes out again on a new one. No delta is lost either way."""
    import uuid

    import redis

    from assistant import events, streams

    run_id = f"wire-{uuid.uuid4().hex}"
    admin = redis.Redis.from_url(settings.REDIS_URL)

    async def stream() -> tuple[streams.Snapshot, int]:
        publisher = DeltaPublisher("c", run_id, 0)
        publisher.add("one ")
        await publisher.drain()
        wire = events.DeltaBatcher.for_this_loop().wire
        assert wire is not None and wire.connection is not None
        admin.script_flush()
        publisher.add("two ")
        await publisher.drain()
        killed = _kill_connections_of_this_database(admin)  # the wire's among them
        publisher.add("three.")
        await publisher.close()
        return await streams.snapshot(run_id), killed

    snap, killed = asyncio.run(stream())
    assert killed >= 1
    assert snap == streams.Snapshot(3, "one two three.")


def _kill_connections_of_this_database(admin) -> int:
    """Kill this Redis database's other client connections. Only this database's: CLIENT KILL
    by type would reach every database of the server, another test process's among them."""
    db = str(admin.connection_pool.connection_kwargs.get("db", 0))
    me = admin.client_id()
    killed = 0
    for client in admin.client_list():
        if client.get("db") == db and int(client["id"]) != me:
            killed += admin.client_kill_filter(_id=client["id"])
    return killed
