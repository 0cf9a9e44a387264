"""Failure handling: an always-failing message gets exactly 1 + retries attempts with real backoff gaps,
then one DLQ record with the exact original bytes, key and headers plus the error headers; the
partition goes on."""

from __future__ import annotations

import itertools
import threading
import time

from streamguard import App, Retry, Settings
from streamguard.core.envelope import parse_envelope
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


class PaymentDeclined(Exception):
    pass


def test_retries_then_dead_letter(kafka, new_topic):
    topic = new_topic(partitions=1)
    poison_value = b'{"order": 7, "note": "\xe2\x9c\x93 exact bytes"}'
    hdrs = [("trace-id", b"abc123"), ("binary", bytes(range(8)))]
    produce_all(kafka.bootstrap, topic, [(b"k-before", b"fine-0")])
    produce_all(kafka.bootstrap, topic, [(b"order-7", poison_value)], headers=hdrs)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), f"fine-{i}".encode()) for i in range(1, 30)])
    attempts: list[float] = []
    fine: list[bytes] = []
    lock = threading.Lock()
    app = App(f"dlq-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, retry=Retry(attempts=4, backoff=(0.2, 1.0), jitter=False))
    def handle(value: bytes, ctx) -> None:
        if value == poison_value:
            with lock:
                attempts.append(time.monotonic())
            raise PaymentDeclined("card expired")
        with lock:
            fine.append(value)

    with running(app) as worker:
        wait_until(lambda: worker.stats["dead_lettered"] == 1 and len(fine) == 30, 60, what="DLQ + the rest")
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for gap, expected in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert gap >= expected * 0.9, f"backoff gap {gap:.3f}s shorter than {expected}s: {gaps}"
    [rec] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=30)
    assert rec.value() == poison_value
    assert rec.key() == b"order-7"
    got = rec.headers()
    assert got[: len(hdrs)] == hdrs, "original headers must come first, unchanged"
    env = parse_envelope(got)
    assert env.error_type.endswith("PaymentDeclined"), env.error_type
    assert env.error_message == "card expired"
    assert env.attempts == 4
    assert env.source_topic == topic and env.source_partition == 0 and env.source_offset == 1
    assert env.reason == "dead-letter"
    assert env.first_failure_ms is not None and env.last_failure_ms is not None
    assert env.last_failure_ms - env.first_failure_ms >= 1300
    assert env.handler and env.worker_id == worker.worker_id
    assert env.stack and "PaymentDeclined" in env.stack
