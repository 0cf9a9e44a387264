"""Failure handling: the same idempotency key delivered several times produces its effect once."""

from __future__ import annotations

from streamguard import App, Settings, SqliteStore
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_duplicates_are_skipped(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    for i in range(5):
        produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), b"charge order-1")],
                    headers=[("idempotency-key", b"order-1")])
    produce_all(kafka.bootstrap, topic, [(f"o{i}".encode(), f"charge {i}".encode()) for i in range(20)])
    effects: list[bytes] = []
    app = App(f"idem-{topic}", kafka.bootstrap, idempotency=SqliteStore(tmp_path / "idem.db"),
              settings=Settings(commit_interval=0.2))

    @app.handler(topic, concurrency=8)
    def handle(value: bytes, ctx) -> None:
        effects.append(value)

    with running(app) as worker:
        wait_until(lambda: worker.stats["ok"] + worker.stats["duplicate_skipped"] == 25, 60)
    assert effects.count(b"charge order-1") == 1
    assert worker.stats["duplicate_skipped"] == 4
    assert len(effects) == 21
