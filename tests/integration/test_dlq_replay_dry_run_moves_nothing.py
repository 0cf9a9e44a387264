"""Ops: `streamguard dlq replay --dry-run` lists exactly what would move (and where) but produces nothing and
commits no position: a real replay afterwards still moves every record."""

from __future__ import annotations

import subprocess
import sys
import time

from confluent_kafka import Producer

from streamguard.core.envelope import FailureInfo, dead_letter_headers
from streamguard.testing.pytest_plugin import create_topic
from tests.cli_helpers import count_records, run_cli


def test_dry_run_moves_nothing(kafka, new_topic):
    source = new_topic(partitions=2)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(6):
        info = FailureInfo(error_type="ValueError" if i < 4 else "KeyError", error_message="bad", stack="",
                           attempts=1, first_failure_ms=now, last_failure_ms=now, handler="h", worker_id="w",
                           reason="dead-letter")
        p.produce(dlq, key=f"k{i}".encode(), value=b"secret-value", headers=dead_letter_headers(
            [], source_topic=source, partition=i % 2, offset=i, timestamp_ms=now, info=info, key_len=2, value_len=12))
    assert p.flush(30) == 0

    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--dry-run", "--error-type", "ValueError")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "dry run: nothing is replayed" in out and "4 record(s) to replay" in out and f"-> {source}: 4" in out, out
    assert "2 by filter" in out, out
    rows = [ln for ln in out.splitlines() if ln.startswith("0:")]
    assert [r.split()[0] for r in rows] == ["0:0", "0:1", "0:2", "0:3"], out
    assert f"{source}[0]" in rows[0] and f"{source}[1]" in rows[1], "target partition = source partition"
    assert "secret-value" not in out
    assert count_records(kafka.bootstrap, source) == 0, "a dry run produced records"

    # no position was committed: the real replay (without --yes, answering y) moves all four
    res = subprocess.run([sys.executable, "-m", "streamguard.cli", "dlq", "replay", dlq, "--error-type", "ValueError",
                          "--bootstrap", kafka.bootstrap], input="y\n", capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Replay 4 record(s)? [y/N]" in res.stdout and "replayed 4 of 4" in res.stdout, res.stdout
    assert count_records(kafka.bootstrap, source) == 4
