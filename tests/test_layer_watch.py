"""A Daphne's sockets are told to resync once its channel layer is back after losing Redis
(assistant.events.LayerWatch): what was published meanwhile — a run's end among it — reached
nobody, and a socket that stayed open would otherwise show that run running for ever.

A redis-server of this test's own (restarted here, keeping nothing) under the production
layer (RedisPubSubChannelLayer); the consumer is a stand-in that records being told.
bench/cluster.py's redis-end fault and tests/test_cluster.py show the whole path."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path

from channels_redis.pubsub import RedisPubSubChannelLayer

from assistant.events import LayerWatch
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("tandem_bench_cluster", ROOT / "bench/cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Socket:
    def __init__(self) -> None:
        self.told: list[float] = []

    async def layer_recovered(self) -> None:
        self.told.append(time.monotonic())


def test_sockets_resync_once_the_channel_layer_is_back_after_a_redis_restart(tmp_path):
    redis = _bench().OwnRedis(free_port(), tmp_path / "redis.log")
    redis.start()

    async def scenario() -> tuple[list[float], list[float], float]:
        layer = RedisPubSubChannelLayer(hosts=[redis.url])
        watch = LayerWatch(layer)
        watch.PING_SECONDS, watch.LOST_AFTER_SECONDS = 0.2, 1.0
        socket = Socket()
        watch.add(socket)
        await asyncio.sleep(1.0)
        quiet = list(socket.told)  # Redis answering: nobody is told anything
        await asyncio.get_running_loop().run_in_executor(None, redis.stop)
        await asyncio.sleep(1.5)
        await asyncio.get_running_loop().run_in_executor(None, redis.start)
        back = time.monotonic()
        deadline = back + 20
        while not socket.told and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        watch.discard(socket)
        await asyncio.sleep(0.5)  # the watch ends with its last socket
        assert watch.task is not None and watch.task.done()
        await layer.flush()
        return quiet, socket.told, back

    try:
        quiet, told, back = asyncio.run(scenario())
    finally:
        redis.stop()
    assert quiet == []
    assert len(told) == 1, "the socket was not told to resync after the outage"
    print(f"told {told[0] - back:.2f} s after Redis was back")
