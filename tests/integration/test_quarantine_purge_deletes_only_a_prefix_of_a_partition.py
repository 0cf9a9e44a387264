"""Ops: `streamguard quarantine purge` deletes records with Kafka's DeleteRecords, which only removes a prefix of
a partition: a prefix selection is deleted after confirmation (new low watermark), a selection with holes is
refused with a clear message and deletes nothing, "n" at the prompt deletes nothing."""

from __future__ import annotations

import subprocess
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from streamguard.core.envelope import FailureInfo, dead_letter_headers
from streamguard.testing.pytest_plugin import create_topic


def _sg(bootstrap: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamguard.cli", *args, "--bootstrap", bootstrap],
                          input=stdin, capture_output=True, text=True, timeout=120)


def _marks(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "marks"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        return low, high
    finally:
        c.close()


def test_purge_only_a_prefix(kafka, new_topic):
    source = new_topic(partitions=1)
    quarantine = create_topic(kafka.bootstrap, f"{source}.quarantine", 1)
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(10):
        etype = "streamguard.errors.DecodeError" if i < 4 or i == 7 else "shop.Suspicious"
        info = FailureInfo(error_type=etype, error_message="held", stack="", attempts=0, first_failure_ms=now,
                           last_failure_ms=now, handler="h", worker_id="w", reason="quarantine")
        p.produce(quarantine, key=b"k", value=b"v", headers=dead_letter_headers(
            [], source_topic=source, partition=0, offset=i, timestamp_ms=now, info=info, key_len=1, value_len=1))
    assert p.flush(30) == 0

    # DecodeError = offsets 0-3 and 7: not a prefix
    res = _sg(kafka.bootstrap, "quarantine", "purge", quarantine, "--error-type", "DecodeError", "--yes")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "cannot purge this selection" in res.stderr and "offset 7 is selected but offset 4" in res.stderr, \
        res.stderr
    assert _marks(kafka.bootstrap, quarantine) == (0, 10)

    res = _sg(kafka.bootstrap, "quarantine", "purge", quarantine, "--error-type", "DecodeError", "--offsets", "0-5",
              stdin="n\n")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "delete offsets 0..3 (4 record(s))" in res.stdout and "aborted: nothing deleted" in res.stdout, res.stdout
    assert _marks(kafka.bootstrap, quarantine) == (0, 10)

    res = _sg(kafka.bootstrap, "quarantine", "purge", quarantine, "--error-type", "DecodeError", "--offsets", "0-5",
              "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "purged 4 record(s)" in res.stdout and "0:4" in res.stdout, res.stdout
    assert _marks(kafka.bootstrap, quarantine) == (4, 10)
    res = _sg(kafka.bootstrap, "quarantine", "list", quarantine)
    assert res.returncode == 0 and f"{quarantine}: 6 message(s)" in res.stdout, res.stdout + res.stderr
