"""Runtime: a handler hung past max.poll.interval.ms does not get the worker evicted; other partitions flow."""

from __future__ import annotations

import threading

from streamguard import App, Retry, Settings
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_hung_handler_keeps_membership(kafka, new_topic):
    topic = new_topic(partitions=2)
    produce_all(kafka.bootstrap, topic, [(b"hang", b"hang")], partition=0)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), f"{i}".encode()) for i in range(50)], partition=1)
    release = threading.Event()
    done: list[str] = []
    settings = Settings(commit_interval=0.2, kafka={"max.poll.interval.ms": 3000, "session.timeout.ms": 3000,
                                                    "heartbeat.interval.ms": 500})
    app = App(f"hung-{topic}", kafka.bootstrap, settings=settings)

    @app.handler(topic, timeout=None, retry=Retry(attempts=1))
    def handle(value: bytes, ctx) -> None:
        if value == b"hang":
            release.wait(30)
        done.append(value.decode())

    with running(app) as worker:
        wait_until(lambda: len(done) >= 50, 30, what="the healthy partition")
        release.wait(8)  # well past max.poll.interval.ms (3 s) while the handler hangs
        assert worker.stats["lost"] == 0 and worker.stats["revoked"] == 0, dict(worker.stats)
        assert len(worker.assignment) == 2
        release.set()
        wait_until(lambda: "hang" in done, 10)
    assert worker.stats["lost"] == 0
