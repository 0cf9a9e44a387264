"""Ops: `streamguard dlq list` counts every *.dlq topic's records (watermarks) and breaks them down by
streamguard.error.type and by source partition, read from the real topic by the real CLI."""

from __future__ import annotations

import json
import time
from collections import Counter

from confluent_kafka import Producer

from streamguard.core.envelope import FailureInfo, dead_letter_headers
from streamguard.testing.pytest_plugin import create_topic
from tests.cli_helpers import run_cli


def _dlq_headers(source: str, partition: int, offset: int, etype: str) -> list[tuple[str, bytes]]:
    now = int(time.time() * 1000)
    info = FailureInfo(error_type=etype, error_message=f"{etype} at {offset}", stack="Traceback: ...", attempts=3,
                       first_failure_ms=now - 500, last_failure_ms=now, handler="shop.handle", worker_id="w-1",
                       reason="dead-letter", idempotency_key=f"id-{offset}")
    return dead_letter_headers([("trace-id", b"t")], source_topic=source, partition=partition, offset=offset,
                               timestamp_ms=now - 1000, info=info, key_len=2, value_len=5)


def test_dlq_list_counts_by_error_type(kafka, new_topic):
    source = new_topic(partitions=3)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 2)
    other = new_topic(partitions=1)  # not a DLQ: never listed
    spec = [("ValueError", 0)] * 3 + [("shop.PaymentDeclined", 1)] * 4 + [("TimeoutError", 2)] + \
           [("shop.PaymentDeclined", 2)] * 2 + [("ValueError", 1)]
    p = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    for i, (etype, sp) in enumerate(spec):
        p.produce(dlq, key=f"k{i}".encode(), value=b"value", partition=i % 2,
                  headers=_dlq_headers(source, sp, 100 + i, etype))
    assert p.flush(30) == 0

    res = run_cli(kafka.bootstrap, "dlq", "list", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["topic"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert other not in rows
    mine = rows[dlq]
    assert mine["messages"] == len(spec) == mine["read"]
    assert mine["partitions"] == 2
    assert mine["by_error_type"] == dict(Counter(e for e, _ in spec))
    assert mine["by_source_partition"] == {f"{source}/{sp}": n for sp, n in Counter(s for _, s in spec).items()}
    assert mine["by_reason"] == {"dead-letter": len(spec)}

    # the readable form says the same
    res = run_cli(kafka.bootstrap, "dlq", "list", dlq)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"{dlq}: {len(spec)} message(s) in 2 partition(s)")
    counts = {ln.split()[0]: int(ln.split()[1]) for ln in lines[1:] if len(ln.split()) == 2 and ln.split()[1].isdigit()}
    assert counts["shop.PaymentDeclined"] == 6 and counts["ValueError"] == 4 and counts["TimeoutError"] == 1
    assert counts[f"{source}/1"] == 5 and counts[f"{source}/0"] == 3 and counts[f"{source}/2"] == 3

    # a missing topic is a clear error (exit 2)
    res = run_cli(kafka.bootstrap, "dlq", "list", f"{source}.nope.dlq")
    assert res.returncode == 2 and "does not exist" in res.stderr, (res.returncode, res.stderr)
