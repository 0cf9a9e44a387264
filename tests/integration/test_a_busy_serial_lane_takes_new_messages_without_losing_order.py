"""Runtime: a running partition-serial lane extends its batch with what the poll thread hands over meanwhile
(fewer thread hand-offs under load), and still runs every message once, in offset order, with a failure in
the extended part taking the full retry / DLQ path and the commit reaching the end; with an idempotency store
too (the claimed lane), where every message that ran ends DONE in the store."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamguard import App, Retry, Settings, SqliteStore
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until

TOTAL = 6000
POISON = 4500


def committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = c.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset
    finally:
        c.close()


@pytest.mark.parametrize("with_store", [False, True], ids=["plain", "claimed"])
def test_lane_extension_keeps_order_and_failure_paths(kafka, new_topic, tmp_path, with_store):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), str(i).encode()) for i in range(TOTAL)], partition=0)
    seen: list[int] = []
    calls: dict[int, int] = {}
    lock = threading.Lock()
    store = SqliteStore(tmp_path / "idem.db") if with_store else None
    app = App(f"lane-ext-{topic}", kafka.bootstrap, idempotency=store,
              settings=Settings(commit_interval=0.2, poll_batch=200))

    @app.handler(topic, ordering="partition", timeout=5.0, retry=Retry(attempts=2, backoff=(0.01, 0.01), jitter=False))
    def handle(value: bytes) -> None:
        n = int(value)
        with lock:
            calls[n] = calls.get(n, 0) + 1
        time.sleep(0.0002)  # slow enough that later poll batches arrive while the lane runs
        if n == POISON:
            raise ValueError("never works")
        with lock:
            seen.append(n)

    with running(app) as worker:
        wait_until(lambda: len(seen) == TOTAL - 1 and worker.stats["dead_lettered"] == 1, 90, what="all resolved")
        wait_until(lambda: committed(kafka.bootstrap, app.group_id, topic) == TOTAL, 30, what="commit at the end")
        stats = dict(worker.stats)
    assert stats["lane_extended"] > 0, "no running lane was extended: the path under test did not run"
    assert seen == [i for i in range(TOTAL) if i != POISON], "offset order broken by a lane extension"
    assert {n: c for n, c in calls.items() if c != 1} == {POISON: 2}, "a message ran twice (or not at all)"
    [dlq] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=20)
    assert dlq.value() == str(POISON).encode()
    if store is not None:
        with store:
            states = store.peek_many([f"{topic}/0/{i}" for i in range(TOTAL)])
        assert [i for i, (done, _) in enumerate(states) if not done] == [POISON], "a message that ran is not DONE"
        assert {d for i, (_, d) in enumerate(states) if i != POISON} == {1}, "a key counted a delivery it did not get"
        assert states[POISON] == (False, 0), "dead-lettered: released with its crash-loop counter back to 0"
