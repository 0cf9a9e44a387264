"""Ops: each `streamguard dlq replay` filter (error type substring/exact, key, source partition, DLQ offsets,
header, since/until, their combination, --limit) replays exactly the DLQ records it matches, no more, no less."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Producer

from streamguard.core.envelope import FailureInfo, dead_letter_headers, parse_envelope
from streamguard.testing.pytest_plugin import create_topic
from tests.cli_helpers import count_records
from tests.kafka_helpers import consume_n

BASE_MS = (int(time.time()) - 3600) * 1000  # DLQ record timestamps: one per second, starting an hour ago
TYPES = ["ValueError", "shop.PaymentDeclined", "shop.ValueErrorWrapper", "TimeoutError"]
N = 24


def _spec(i: int) -> dict[str, Any]:
    return {"etype": TYPES[i % 4], "key": f"k{i % 6}", "source_partition": i % 3,
            "tenant": "acme" if i % 5 == 0 else "globex", "ts": BASE_MS + i * 1000}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


CASES: dict[str, tuple[list[str], Any]] = {
    "error-type-substring": (["--error-type", "ValueError"], lambda i, s: "ValueError" in s["etype"]),
    "error-type-exact": (["--error-type", "=ValueError"], lambda i, s: s["etype"] == "ValueError"),
    "error-type-either": (["--error-type", "Declined", "--error-type", "Timeout"],
                          lambda i, s: s["etype"] in ("shop.PaymentDeclined", "TimeoutError")),
    "key": (["--key", "k4"], lambda i, s: s["key"] == "k4"),
    "source-partition": (["--partition", "2"], lambda i, s: s["source_partition"] == 2),
    "dlq-offsets": (["--offsets", "5-11"], lambda i, s: 5 <= i <= 11),
    "header": (["--header", "tenant=acme"], lambda i, s: s["tenant"] == "acme"),
    "since-until": (["--since", _iso(BASE_MS + 7000), "--until", str(BASE_MS + 15000)],
                    lambda i, s: BASE_MS + 7000 <= s["ts"] < BASE_MS + 15000),
    "combined": (["--error-type", "ValueError", "--partition", "0"],
                 lambda i, s: "ValueError" in s["etype"] and s["source_partition"] == 0),
    "limit": (["--error-type", "shop.", "--limit", "3"], lambda i, s: i in (1, 2, 5)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_filter_selects_exactly(kafka, new_topic, case):
    args, want = CASES[case]
    source = new_topic(partitions=3)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    target = new_topic(partitions=1)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(N):
        s = _spec(i)
        info = FailureInfo(error_type=s["etype"], error_message="boom", stack="", attempts=1,
                           first_failure_ms=s["ts"], last_failure_ms=s["ts"], handler="h", worker_id="w",
                           reason="dead-letter")
        hdrs = dead_letter_headers([("tenant", s["tenant"].encode())], source_topic=source,
                                   partition=s["source_partition"], offset=1000 + i, timestamp_ms=s["ts"], info=info,
                                   key_len=3, value_len=6)
        p.produce(dlq, key=s["key"].encode(), value=f"v{i}".encode(), headers=hdrs, timestamp=s["ts"])
    assert p.flush(30) == 0

    expected = {i for i in range(N) if want(i, _spec(i))}
    assert 0 < len(expected) < N, "a filter case must select some but not all"
    res = subprocess.run([sys.executable, "-m", "streamguard.cli", "dlq", "replay", dlq, "--to", target, *args,
                          "--yes", "--bootstrap", kafka.bootstrap], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"replayed {len(expected)} of {len(expected)} record(s)" in res.stdout, res.stdout
    got = count_records(kafka.bootstrap, target)
    assert got == len(expected), (case, got, sorted(expected), res.stdout)
    recs = consume_n(kafka.bootstrap, target, got, timeout=30)
    offsets = {int(parse_envelope(r.headers()).replayed_from.rsplit("/", 1)[1]) for r in recs}
    assert offsets == expected, (case, sorted(offsets), sorted(expected))
    assert {r.value() for r in recs} == {f"v{i}".encode() for i in expected}
