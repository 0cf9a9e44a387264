"""Crash-loop detection counts only deliveries that ended without a clean outcome: a message dead-lettered
again and again (redeliveries after rebalances, replays) is never quarantined as a crash loop."""

from __future__ import annotations

from streamguard import App, PermanentFailure, Settings, SqliteStore
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_clean_failures_do_not_count_as_crashes(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=1)
    for _ in range(5):  # the same logical message delivered five times (same idempotency key)
        produce_all(kafka.bootstrap, topic, [(b"k", b"bad")], headers=[("idempotency-key", b"order-9")])
    calls: list[int] = []
    app = App(f"nocl-{topic}", kafka.bootstrap, idempotency=SqliteStore(tmp_path / "s.db"),
              settings=Settings(commit_interval=0.2))

    @app.handler(topic, max_deliveries=3)
    def handle(value: bytes, ctx) -> None:
        calls.append(ctx.offset)
        raise PermanentFailure("bad order")

    with running(app) as worker:
        wait_until(lambda: worker.stats["dead_lettered"] + worker.stats["quarantined"] == 5, 30)
    assert worker.stats["quarantined"] == 0, "a cleanly dead-lettered message was taken for a crash loop"
    assert worker.stats["dead_lettered"] == 5
    assert calls == [0, 1, 2, 3, 4]
