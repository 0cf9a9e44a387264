"""Ops: `streamguard dlq replay --rate 5/s` paces the writes: 10 records span at least 1.6 s of produce time
(measured on the replayed records' own CreateTime timestamps, not around the process)."""

from __future__ import annotations

import subprocess
import sys
import time

from confluent_kafka import Producer

from streamguard.core.envelope import FailureInfo, dead_letter_headers
from streamguard.testing.pytest_plugin import create_topic
from tests.kafka_helpers import consume_n


def test_rate_is_honoured(kafka, new_topic):
    source = new_topic(partitions=1)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(10):
        info = FailureInfo(error_type="ValueError", error_message="bad", stack="", attempts=1, first_failure_ms=now,
                           last_failure_ms=now, handler="h", worker_id="w", reason="dead-letter")
        p.produce(dlq, key=b"k", value=f"v{i}".encode(), headers=dead_letter_headers(
            [], source_topic=source, partition=0, offset=i, timestamp_ms=now, info=info, key_len=1, value_len=2))
    assert p.flush(30) == 0

    res = subprocess.run([sys.executable, "-m", "streamguard.cli", "dlq", "replay", dlq, "--rate", "5/s", "--yes",
                          "--bootstrap", kafka.bootstrap], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    recs = consume_n(kafka.bootstrap, source, 10, timeout=30)
    assert [r.value() for r in recs] == [f"v{i}".encode() for i in range(10)], "key order kept"
    stamps = [r.timestamp()[1] for r in recs]
    spread = (max(stamps) - min(stamps)) / 1000
    assert spread >= 1.6, f"10 records at 5/s were produced within {spread:.2f}s"
