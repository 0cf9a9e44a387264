"""Ops: `streamguard dlq replay` refuses a target topic that does not exist (exit 2, naming it), moves and
commits nothing, creates nothing; with --create-target it creates the topic and replays."""

from __future__ import annotations

import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streamguard.core.envelope import FailureInfo, dead_letter_headers
from streamguard.testing.pytest_plugin import create_topic
from tests.cli_helpers import run_cli
from tests.kafka_helpers import consume_n


def test_missing_target_is_refused(kafka, new_topic):
    source = new_topic(partitions=1)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    gone = f"{source}-deleted-source"  # a DLQ record whose source topic no longer exists
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(3):
        info = FailureInfo(error_type="ValueError", error_message="bad", stack="", attempts=1, first_failure_ms=now,
                           last_failure_ms=now, handler="h", worker_id="w", reason="dead-letter")
        p.produce(dlq, key=b"k", value=f"v{i}".encode(), headers=dead_letter_headers(
            [], source_topic=gone, partition=0, offset=i, timestamp_ms=now, info=info, key_len=1, value_len=2))
    assert p.flush(30) == 0
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    target = f"{source}-retarget"

    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--to", target, "--yes")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"target topic '{target}' does not exist" in res.stderr and "--create-target" in res.stderr, res.stderr
    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--yes")  # to the origin, which is gone
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"target topic '{gone}' does not exist" in res.stderr, res.stderr
    topics = admin.list_topics(timeout=10).topics
    assert target not in topics and gone not in topics, "a refused replay created a topic"

    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--to", target, "--create-target", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "replayed 3 of 3" in res.stdout, res.stdout  # nothing was committed by the refused runs
    assert [r.value() for r in consume_n(kafka.bootstrap, target, 3, timeout=30)] == [b"v0", b"v1", b"v2"]
