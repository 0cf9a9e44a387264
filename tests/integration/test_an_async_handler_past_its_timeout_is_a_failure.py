"""Runtime: an async handler running past `timeout` is cancelled and counted as a failed attempt
(HandlerTimeout): retried, then dead-lettered; other messages are not held up."""

from __future__ import annotations

import asyncio
import time

from streamguard import App, Retry, Settings
from streamguard.core.envelope import parse_envelope
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


def test_async_timeout(kafka, new_topic):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(b"slow", b"slow")] + [(f"k{i}".encode(), b"fast") for i in range(20)])
    starts: list[float] = []
    fast: list[int] = []
    app = App(f"ato-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, timeout=0.5, retry=Retry(attempts=2, backoff=(0.05, 0.1), jitter=False))
    async def handle(value: bytes, ctx) -> None:
        if value == b"slow":
            starts.append(time.monotonic())
            await asyncio.sleep(30)
        fast.append(ctx.offset)

    with running(app) as worker:
        wait_until(lambda: len(fast) == 20, 20, what="fast messages while the slow one hangs")
        assert len(starts) == 1
        wait_until(lambda: worker.stats["dead_lettered"] == 1, 20)
    assert len(starts) == 2
    [rec] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=20)
    env = parse_envelope(rec.headers())
    assert env.error_type == "streamguard.errors.HandlerTimeout" and env.attempts == 2
