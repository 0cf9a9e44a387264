"""Helpers for tests that drive the real `streamguard` CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys

from confluent_kafka import Consumer, TopicPartition


def run_cli(bootstrap: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m streamguard.cli ARGS --bootstrap B`, capturing output."""
    return subprocess.run([sys.executable, "-m", "streamguard.cli", *args, "--bootstrap", bootstrap],
                          capture_output=True, text=True, timeout=timeout)


def count_records(bootstrap: str, topic: str) -> int:
    """Records currently in ``topic`` (sum of high - low watermarks)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "count"})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return sum(h - lo for lo, h in (c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                                         for p in md.partitions))
    finally:
        c.close()
