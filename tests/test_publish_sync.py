"""What sending a message does after its commit, kept cheap (issue 14).

events.publish_sync in production (Redis, the pub/sub layer) writes the log entry and the
PUBLISH itself, in one round trip from the calling thread, instead of hopping onto the server's
loop for the layer's group_send: what a subscriber gets must be exactly what that group_send
would have sent, on the same channel."""

from __future__ import annotations

import asyncio
import json
import uuid

from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

from assistant import events, streams


async def _own_name(layer: RedisPubSubChannelLayer, group: str) -> str:
    return layer._get_group_channel_name(group)  # needs a running loop


def test_the_group_channel_is_the_layers_own(settings):
    group = events.group_name(str(uuid.uuid4()))
    for layer in (
        RedisPubSubChannelLayer(hosts=[settings.REDIS_URL]),
        RedisPubSubChannelLayer(hosts=[settings.REDIS_URL], prefix="tandemtest"),
    ):
        assert events._group_channel(layer, group) == asyncio.run(_own_name(layer, group))


def test_a_subscriber_gets_the_event_and_the_log_has_it(settings, redis_clean):
    layer = get_channel_layer()
    assert isinstance(layer, RedisPubSubChannelLayer)  # the production layer
    conversation_id = str(uuid.uuid4())
    event = {"t": "message.created", "message": {"id": "m", "content": "héllo"}, "run": None}

    async def go() -> dict:
        channel = await layer.new_channel()
        await layer.group_add(events.group_name(conversation_id), channel)
        try:
            # From a thread, as from a view's on_commit.
            await asyncio.to_thread(events.publish_sync, conversation_id, event)
            return await asyncio.wait_for(layer.receive(channel), 5)
        finally:
            await layer.group_discard(events.group_name(conversation_id), channel)

    assert asyncio.run(go()) == {"type": "conv.event", "event": event}
    entries = streams.sync_redis().xrange(events.log_key(conversation_id))
    assert [json.loads(fields[b"e"]) for _, fields in entries] == [event]
    assert (
        0 < streams.sync_redis().ttl(events.log_key(conversation_id)) <= settings.API_EVENT_LOG_TTL
    )


def test_presence_is_published_but_not_logged(redis_clean):
    conversation_id = str(uuid.uuid4())
    events.publish_sync(conversation_id, {"t": "presence", "viewers": []})
    assert not streams.sync_redis().exists(events.log_key(conversation_id))


def test_every_thread_shares_one_celery_backend():
    """Each request has a thread of its own: a backend per thread (Celery's default) was built
    again for every message sent, in enqueue_run (CELERY_RESULT_BACKEND_THREAD_SAFE)."""
    import threading

    from config.celery import app

    seen = []
    thread = threading.Thread(target=lambda: seen.append(app.backend))
    thread.start()
    thread.join()
    assert seen == [app.backend]
