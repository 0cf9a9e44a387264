"""Ops: `streamguard dlq replay` is idempotent and resumable. Replayed copies keep the original key, value and
headers (incl. `idempotency-key` and streamguard.idempotency-key), carry streamguard.replayed-from, go to their
source partition; a second identical replay delivers nothing; a replay with another filter still finds the
records an earlier filter skipped; an interrupted (SIGINT) replay resumes exactly where it stopped, and a
SIGKILLed one resumes from its last commit (at-least-once, never from scratch)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

from confluent_kafka import Producer

from streamguard.core.envelope import H_IDEMPOTENCY_KEY, FailureInfo, dead_letter_headers, parse_envelope
from streamguard.testing.pytest_plugin import create_topic
from tests.cli_helpers import count_records, run_cli
from tests.kafka_helpers import consume_n
from tests.runtime_helpers import wait_until


def _fill_dlq(bootstrap: str, dlq: str, source: str, n: int, *, partitions: int = 1) -> None:
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(n):
        info = FailureInfo(error_type="Flaky" if i % 2 else "Broken", error_message="boom", stack="", attempts=3,
                           first_failure_ms=now, last_failure_ms=now, handler="h", worker_id="w",
                           reason="dead-letter", idempotency_key=f"sg-id-{i}")
        original = [("idempotency-key", f"order-{i}".encode()), ("trace-id", f"t{i}".encode())]
        hdrs = dead_letter_headers(original, source_topic=source, partition=i % partitions, offset=500 + i,
                                   timestamp_ms=now, info=info, key_len=8, value_len=8)
        p.produce(dlq, key=f"key-{i}".encode(), value=f"value-{i}".encode(), headers=hdrs)
    assert p.flush(30) == 0


def _popen(bootstrap: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "streamguard.cli", *args, "--bootstrap", bootstrap],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _replayed_offsets(bootstrap: str, topic: str) -> Counter[int]:
    recs = consume_n(bootstrap, topic, count_records(bootstrap, topic), timeout=30)
    return Counter(int(parse_envelope(r.headers()).replayed_from.rsplit("/", 1)[1]) for r in recs)


def test_replay_twice_delivers_once_with_provenance_and_identity(kafka, new_topic):
    source = new_topic(partitions=3)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    _fill_dlq(kafka.bootstrap, dlq, source, 12, partitions=3)

    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "replayed 12 of 12 record(s)" in res.stdout and f"-> {source}: 12" in res.stdout, res.stdout
    assert "replayed 12/12 (skipped 0)" in res.stderr, res.stderr  # the progress line
    recs = consume_n(kafka.bootstrap, source, 12, timeout=30)
    assert len(recs) == 12
    for r in recs:
        i = int(r.value().decode().split("-")[1])
        assert r.key() == f"key-{i}".encode() and r.value() == f"value-{i}".encode()
        assert r.partition() == i % 3, "replayed to its source partition"
        hdrs = r.headers()
        assert hdrs[:2] == [("idempotency-key", f"order-{i}".encode()), ("trace-id", f"t{i}".encode())]
        assert (H_IDEMPOTENCY_KEY, f"sg-id-{i}".encode()) in hdrs
        assert ("streamguard.replayed-from", f"{dlq}/0/{i}".encode()) in hdrs
        assert not [n for n, _ in hdrs if n.startswith("streamguard.") and
                    n not in (H_IDEMPOTENCY_KEY, "streamguard.replayed-from")], hdrs

    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing to replay" in res.stdout and "12 already replayed" in res.stdout, res.stdout
    assert count_records(kafka.bootstrap, source) == 12, "the second identical replay delivered something"


def test_replay_with_another_filter_still_finds_what_an_earlier_filter_skipped(kafka, new_topic):
    source = new_topic(partitions=1)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    _fill_dlq(kafka.bootstrap, dlq, source, 10)

    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--error-type", "Flaky", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert _replayed_offsets(kafka.bootstrap, source) == Counter({1: 1, 3: 1, 5: 1, 7: 1, 9: 1})
    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--yes")  # everything: only the Broken ones are left
    assert res.returncode == 0, res.stdout + res.stderr
    assert "replayed 5 of 5" in res.stdout and "5 already replayed" in res.stdout, res.stdout
    assert _replayed_offsets(kafka.bootstrap, source) == Counter(range(10))


def test_interrupted_replay_resumes_where_it_stopped(kafka, new_topic):
    source = new_topic(partitions=1)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    _fill_dlq(kafka.bootstrap, dlq, source, 40)

    proc = _popen(kafka.bootstrap, "dlq", "replay", dlq, "--yes", "--rate", "10/s")
    try:
        wait_until(lambda: count_records(kafka.bootstrap, source) >= 8, 60, interval=0.2, what="first replayed records")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    assert "interrupted" in out, out
    first = count_records(kafka.bootstrap, source)
    assert 8 <= first < 40, first

    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"replayed {40 - first} of {40 - first}" in res.stdout, res.stdout
    assert _replayed_offsets(kafka.bootstrap, source) == Counter(range(40)), "each exactly once"


def test_killed_replay_resumes_from_its_last_commit(kafka, new_topic):
    source = new_topic(partitions=1)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    _fill_dlq(kafka.bootstrap, dlq, source, 40)

    proc = _popen(kafka.bootstrap, "dlq", "replay", dlq, "--yes", "--rate", "10/s")
    try:
        wait_until(lambda: count_records(kafka.bootstrap, source) >= 20, 60, interval=0.2, what="replayed records")
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    first = count_records(kafka.bootstrap, source)
    assert first < 40, "the replay finished before it was killed"

    res = run_cli(kafka.bootstrap, "dlq", "replay", dlq, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    delivered = _replayed_offsets(kafka.bootstrap, source)
    assert set(delivered) == set(range(40)), "every record replayed at least once"
    second = sum(delivered.values()) - first
    assert second <= 40 - 10, f"the rerun replayed {second}: it started (nearly) from scratch"
