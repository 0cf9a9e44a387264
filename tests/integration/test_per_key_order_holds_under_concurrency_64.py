"""Runtime: with concurrency=64, messages of one key run one at a time in offset order; keys interleave."""

from __future__ import annotations

import asyncio
import random
import threading

from streamguard import App, Settings
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_per_key_order_and_real_concurrency(kafka, new_topic):
    topic = new_topic(partitions=3)
    n, keys = 3000, 40
    produce_all(kafka.bootstrap, topic, [(f"k{i % keys}".encode(), f"{i}".encode()) for i in range(n)])
    app = App(f"order-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))
    seen: dict[bytes, list[int]] = {}
    active: set[bytes] = set()
    lock = threading.Lock()
    overlap = {"same_key": 0, "max_parallel": 0}

    @app.handler(topic, concurrency=64)
    async def handle(value: bytes, ctx) -> None:
        with lock:
            if ctx.key in active:
                overlap["same_key"] += 1
            active.add(ctx.key)
            overlap["max_parallel"] = max(overlap["max_parallel"], len(active))
        await asyncio.sleep(random.random() * 0.003)
        with lock:
            active.discard(ctx.key)
            seen.setdefault(ctx.key, []).append(int(value))

    with running(app) as worker:
        wait_until(lambda: sum(map(len, seen.values())) >= n, 90, what="all messages handled")
    assert overlap["same_key"] == 0
    assert overlap["max_parallel"] > 5, overlap
    for key, values in seen.items():
        assert values == sorted(values), f"key {key!r} out of order"
        assert len(values) == len(set(values)), f"key {key!r} handled twice"
    assert sum(map(len, seen.values())) == n
    assert worker.stats["ok"] == n
