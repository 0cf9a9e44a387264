"""Idempotency: a handler running longer than the lease keeps its claim (renewed every lease/3), so another
worker cannot take the key over while the first is still working."""

from __future__ import annotations

import time

from streamguard import App, ClaimStatus, Settings, SqliteStore
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_claim_is_renewed(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(b"k", b"long-job")], headers=[("idempotency-key", b"job-1")])
    db = tmp_path / "idem.db"
    seen: list[ClaimStatus] = []
    app = App(f"lease-{topic}", kafka.bootstrap, idempotency=SqliteStore(db),
              settings=Settings(commit_interval=0.2, lease_seconds=1.0))

    @app.handler(topic, timeout=None)
    def handle(value: bytes, ctx) -> None:
        intruder = SqliteStore(db)
        intruder.open()
        try:
            for _ in range(3):  # well past the 1 s lease, three times
                time.sleep(1.2)
                seen.append(intruder.claim("job-1", "intruder", 1.0).status)
        finally:
            intruder.close()

    with running(app) as worker:
        wait_until(lambda: worker.stats["ok"] == 1, 30)
    assert seen == [ClaimStatus.BUSY] * 3, seen
