"""Ops: `streamguard quarantine release` asks for confirmation: answering "n" (or nothing) moves and commits
nothing; with --yes it moves exactly the selected records back to their source topic and partition, and
releasing again moves nothing more."""

from __future__ import annotations

import subprocess
import sys
import time

from confluent_kafka import Producer

from streamguard.core.envelope import FailureInfo, dead_letter_headers, parse_envelope
from streamguard.testing.pytest_plugin import create_topic
from tests.cli_helpers import count_records
from tests.kafka_helpers import consume_n


def _sg(bootstrap: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamguard.cli", *args, "--bootstrap", bootstrap],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_release_moves_exactly_the_selection(kafka, new_topic):
    source = new_topic(partitions=2)
    quarantine = create_topic(kafka.bootstrap, f"{source}.quarantine", 1)
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    kinds = ["streamguard.errors.DecodeError", "streamguard.errors.CrashLoopDetected", "shop.Suspicious"]
    for i in range(9):
        info = FailureInfo(error_type=kinds[i % 3], error_message="held", stack="", attempts=0,
                           first_failure_ms=now, last_failure_ms=now, handler="h", worker_id="w", reason="quarantine")
        p.produce(quarantine, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=dead_letter_headers(
            [("origin", b"x")], source_topic=source, partition=i % 2, offset=i, timestamp_ms=now, info=info,
            key_len=2, value_len=2))
    assert p.flush(30) == 0
    crash_loops = {1, 4, 7}

    res = _sg(kafka.bootstrap, "quarantine", "list", quarantine, "--json")
    assert res.returncode == 0 and '"messages": 9' in res.stdout, res.stdout + res.stderr

    for answer in ("n\n", ""):  # "n", then stdin closed without an answer
        res = _sg(kafka.bootstrap, "quarantine", "release", quarantine, "--error-type", "CrashLoop", stdin=answer)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Release 3 record(s)? [y/N]" in res.stdout and "aborted: nothing released" in res.stdout, res.stdout
        assert count_records(kafka.bootstrap, source) == 0

    res = _sg(kafka.bootstrap, "quarantine", "release", quarantine, "--error-type", "CrashLoop", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "released 3 of 3 record(s)" in res.stdout and f"-> {source}: 3" in res.stdout, res.stdout
    assert "6 by filter" in res.stdout, res.stdout
    assert "fresh crash-loop budget once" in res.stdout
    assert count_records(kafka.bootstrap, source) == 3
    recs = consume_n(kafka.bootstrap, source, 3, timeout=30)
    assert {r.value() for r in recs} == {f"v{i}".encode() for i in crash_loops}
    for r in recs:
        i = int(r.value()[1:])
        assert r.partition() == i % 2 and r.key() == f"k{i}".encode()
        assert parse_envelope(r.headers()).replayed_from == f"{quarantine}/0/{i}"
        assert r.headers()[0] == ("origin", b"x")

    res = _sg(kafka.bootstrap, "quarantine", "release", quarantine, "--error-type", "CrashLoop", "--yes")
    assert res.returncode == 0 and "nothing to release" in res.stdout, res.stdout + res.stderr
    assert count_records(kafka.bootstrap, source) == 3
