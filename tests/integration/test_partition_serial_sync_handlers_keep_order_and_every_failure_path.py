"""Runtime: partition-serial sync handlers (run in batches on one thread) keep offset order, and a failure,
an undecodable record or a timeout in the middle of a batch still takes the full retry / DLQ / quarantine path."""

from __future__ import annotations

import threading
import time

import msgspec

from streamguard import App, Retry, Settings
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


class Item(msgspec.Struct):
    n: int
    kind: str = "ok"


def test_serial_lane_order_and_failures(kafka, new_topic):
    topic = new_topic(partitions=2)
    records = []
    for i in range(2000):
        kind = {300: "flaky", 700: "poison", 1200: "slow"}.get(i, "ok")
        records.append((f"k{i}".encode(), msgspec.json.encode(Item(i, kind))))
    records.insert(900, (b"garbage", b"\xffnot json"))
    produce_all(kafka.bootstrap, topic, records, partition=0)
    produce_all(kafka.bootstrap, topic, [(b"x", msgspec.json.encode(Item(i))) for i in range(500)], partition=1)
    seen: dict[int, list[int]] = {0: [], 1: []}
    flaky_calls = []
    lock = threading.Lock()
    app = App(f"lane-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, model=Item, ordering="partition", timeout=1.0,
                 retry=Retry(attempts=3, backoff=(0.05, 0.1), jitter=False))
    def handle(item: Item, ctx) -> None:
        if item.kind == "flaky":
            flaky_calls.append(time.monotonic())
            if len(flaky_calls) < 3:
                raise ConnectionError("try again")
        if item.kind == "poison":
            raise ValueError("never works")
        if item.kind == "slow" and not getattr(handle, "slowed", False):
            handle.slowed = True  # type: ignore[attr-defined]
            time.sleep(2.5)  # past the 1 s timeout once; the retry succeeds
            return
        with lock:
            seen[ctx.partition].append(item.n)

    with running(app) as worker:
        wait_until(lambda: len(seen[0]) == 1999 and len(seen[1]) == 500, 90, what="everything resolved")
        wait_until(lambda: worker.stats["dead_lettered"] == 1 and worker.stats["quarantined"] == 1, 30)
    assert seen[0] == [i for i in range(2000) if i != 700], "offset order broken in the serial lane"
    assert seen[1] == list(range(500))
    assert len(flaky_calls) == 3
    assert worker.stats["retried"] >= 2  # the flaky one and the timed-out slow one
    [dlq] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=20)
    assert msgspec.json.decode(dlq.value(), type=Item).n == 700
    [quar] = consume_n(kafka.bootstrap, f"{topic}.quarantine", 1, timeout=20)
    assert quar.value() == b"\xffnot json"
