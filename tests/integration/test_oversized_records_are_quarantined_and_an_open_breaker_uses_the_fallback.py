"""Failure handling: a record over max_message_bytes is quarantined unprocessed; while a dependency's
breaker is open, a handler with on_open="fallback" serves its fallback instead of waiting."""

from __future__ import annotations

import threading

from streamguard import App, CircuitBreaker, Settings
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


def test_oversized_is_quarantined(kafka, new_topic):
    topic = new_topic(partitions=1)
    big = b"x" * 5000
    produce_all(kafka.bootstrap, topic, [(b"a", b"small"), (b"b", big), (b"c", b"small-2")])
    calls: list[bytes] = []
    app = App(f"big-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, max_message_bytes=1000)
    def handle(value: bytes, ctx) -> None:
        calls.append(value)

    with running(app) as worker:
        wait_until(lambda: worker.stats["quarantined"] == 1 and len(calls) == 2, 30)
    assert calls == [b"small", b"small-2"]
    [rec] = consume_n(kafka.bootstrap, f"{topic}.quarantine", 1, timeout=30)
    assert rec.value() == big
    assert dict(rec.headers())["streamguard.error.type"].endswith(b"MessageTooLarge")


def test_open_breaker_serves_the_fallback(kafka, new_topic):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), f"{i}".encode()) for i in range(40)])
    recs = CircuitBreaker("recommendations", failure_ratio=0.5, window=4, min_calls=2, open_for=60)
    served: dict[str, list[int]] = {"live": [], "fallback": []}
    lock = threading.Lock()

    def fallback(value: bytes, ctx) -> None:
        with lock:
            served["fallback"].append(int(value))

    app = App(f"fb-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, ordering="partition", breakers=[recs], on_open="fallback", fallback=fallback)
    def handle(value: bytes, ctx) -> None:
        with recs.guard():
            if int(value) >= 10:
                raise ConnectionError("recommendation service down")
        with lock:
            served["live"].append(int(value))

    with running(app) as worker:
        wait_until(lambda: len(served["live"]) + len(served["fallback"]) == 40, 60)
    assert served["live"] == list(range(10))
    assert served["fallback"] == list(range(10, 40))
    assert worker.stats["dead_lettered"] == 0
