"""Failure handling: a dependency outage opens the breaker; the runtime waits instead of burning retries
into the DLQ; processing resumes when the dependency is back, with nothing dead-lettered."""

from __future__ import annotations

import threading
import time

from streamguard import App, CircuitBreaker, Retry, Settings
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_outage_pauses_instead_of_dead_lettering(kafka, new_topic):
    topic = new_topic(partitions=2)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), f"{i}".encode()) for i in range(200)])
    payments = CircuitBreaker("payments", failure_ratio=0.5, window=10, min_calls=4, open_for=0.5,
                              half_open_calls=1)
    transitions: list[str] = []
    payments.add_listener(lambda name, old, new: transitions.append(str(new)))
    down = threading.Event()
    down.set()
    done: set[int] = set()
    lock = threading.Lock()
    app = App(f"breaker-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, concurrency=4, breakers=[payments],
                 retry=Retry(attempts=4, backoff=(0.05, 0.2), on=(ConnectionError,)))
    def handle(value: bytes, ctx) -> None:
        with payments.guard():
            if down.is_set():
                raise ConnectionError("payments service unreachable")
        with lock:
            done.add(int(value))

    with running(app) as worker:
        wait_until(lambda: "open" in transitions, 30, what="the breaker opens")
        time.sleep(4)  # a long outage: many open/half-open cycles
        assert worker.stats["dead_lettered"] == 0
        assert len(done) == 0
        down.clear()
        wait_until(lambda: len(done) == 200, 60, what="recovery after the outage")
        assert worker.stats["dead_lettered"] == 0
        assert worker.stats["breaker_waits"] > 0
    assert transitions[-1] == "closed"
