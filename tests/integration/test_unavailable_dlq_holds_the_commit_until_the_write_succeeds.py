"""Failure handling: while the DLQ cannot be written, no commit passes the poison message; once the
DLQ exists the record is written and the commit moves on. Nothing is skipped."""

from __future__ import annotations

import time

from streamguard import App, PermanentFailure, Settings
from streamguard.testing.pytest_plugin import create_topic
from streamguard.testing.sampler import CommitSampler
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


def test_commit_waits_for_the_dlq(kafka, new_topic):
    topic = new_topic(partitions=1)
    records = [(f"k{i}".encode(), f"m{i}".encode()) for i in range(30)]
    records[5] = (b"k5", b"poison")
    produce_all(kafka.bootstrap, topic, records)
    handled: list[bytes] = []
    app = App(f"nodlq-{topic}", kafka.bootstrap,
              settings=Settings(commit_interval=0.2, create_failure_topics=False,
                                kafka={"topic.metadata.refresh.interval.ms": 1000}))

    @app.handler(topic)
    def handle(value: bytes, ctx) -> None:
        if value == b"poison":
            raise PermanentFailure("bad order")
        handled.append(value)

    with CommitSampler(kafka.bootstrap, app.group_id, topic, 1) as sampler, running(app) as worker:
        wait_until(lambda: len(handled) == 29, 60, what="the healthy messages")
        wait_until(lambda: sampler.latest.get(0) == 5, 30, what="commit up to the poison message")
        time.sleep(4)
        assert sampler.max_committed(0) == 5, "committed past a message whose DLQ write has not succeeded"
        assert worker.stats["dead_lettered"] == 0
        create_topic(kafka.bootstrap, f"{topic}.dlq", 1)
        wait_until(lambda: worker.stats["dead_lettered"] == 1, 60, what="the DLQ write after the topic appears")
        wait_until(lambda: sampler.latest.get(0) == 30, 30, what="the commit moves past the poison message")
    [rec] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=30)
    assert rec.value() == b"poison"
