"""Runtime: workers joining and leaving the group under load (cooperative rebalances) lose nothing."""

from __future__ import annotations

import threading
import time

from streamguard import App, Settings
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_join_and_leave_under_load(kafka, new_topic):
    topic = new_topic(partitions=6)
    n = 6000
    handled: dict[int, int] = {}
    lock = threading.Lock()

    def make_app() -> App:
        app = App(f"rebal-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.3, revoke_timeout=10))

        @app.handler(topic, concurrency=32)
        def handle(value: bytes, ctx) -> None:
            time.sleep(0.001)
            with lock:
                handled[int(value)] = handled.get(int(value), 0) + 1

        return app

    producer = threading.Thread(target=produce_all, args=(kafka.bootstrap, topic,
                                                          [(f"k{i % 97}".encode(), f"{i}".encode()) for i in range(n)]))
    with running(make_app()) as a:
        producer.start()
        wait_until(lambda: len(handled) > 500, 60, what="first worker progress")
        with running(make_app()) as b:
            wait_until(lambda: b.stats["assigned"] > 0, 60, what="the second worker gets partitions")
            wait_until(lambda: len(handled) > 2500, 60, what="progress with two workers")
        with running(make_app()):
            producer.join(120)
            wait_until(lambda: len(handled) >= n, 120, what="everything handled")
        assert a.stats["revoked"] > 0
    missing = set(range(n)) - set(handled)
    assert not missing, f"lost {len(missing)} messages"
