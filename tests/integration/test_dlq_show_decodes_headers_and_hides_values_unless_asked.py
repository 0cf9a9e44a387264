"""Ops: `streamguard dlq show` prints each record's decoded streamguard.* headers (table or JSON lines) and
never the value, nor user header values, unless --values is given."""

from __future__ import annotations

import json
import time

from confluent_kafka import Producer

from streamguard.core.envelope import FailureInfo, dead_letter_headers
from streamguard.testing.pytest_plugin import create_topic
from tests.cli_helpers import run_cli

SECRET = b'{"card": "4111-1111-1111-1111"}'


def test_dlq_show_decodes_headers_and_hides_values(kafka, new_topic):
    source = new_topic(partitions=2)
    dlq = create_topic(kafka.bootstrap, f"{source}.dlq", 1)
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(5):
        info = FailureInfo(error_type="shop.PaymentDeclined", error_message=f"card expired #{i} " + "x" * 200,
                           stack="Traceback (most recent call last):\n  boom", attempts=4, first_failure_ms=now - 9,
                           last_failure_ms=now, handler="shop.handle", worker_id="w-7", reason="dead-letter",
                           idempotency_key=f"order-{i}")
        hdrs = dead_letter_headers([("tenant", b"secret-tenant")], source_topic=source, partition=i % 2,
                                   offset=40 + i, timestamp_ms=now - 100, info=info, key_len=8,
                                   value_len=len(SECRET))
        p.produce(dlq, key=f"order-{i}".encode(), value=SECRET, headers=hdrs)
    assert p.flush(30) == 0

    res = run_cli(kafka.bootstrap, "dlq", "show", dlq, "--json")
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["offset"] for r in recs] == [0, 1, 2, 3, 4]
    r = recs[3]
    assert r["source_topic"] == source and r["source_partition"] == 1 and r["source_offset"] == 43
    assert r["error_type"] == "shop.PaymentDeclined" and r["error_message"].startswith("card expired #3 ")
    assert r["attempts"] == 4 and r["reason"] == "dead-letter" and r["idempotency_key"] == "order-3"
    assert r["handler"] == "shop.handle" and r["worker"] == "w-7" and r["key"] == "order-3"
    assert r["headers"] == ["tenant"], "user header names only"
    assert "value" not in r and "4111" not in res.stdout and "secret-tenant" not in res.stdout

    res = run_cli(kafka.bootstrap, "dlq", "show", dlq)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["OFFSET", "TIME", "SOURCE", "ERROR", "TYPE", "MESSAGE", "ATT", "KEY"]
    assert len(lines) == 6
    assert f"{source}/1/43" in lines[4] and "shop.PaymentDeclined" in lines[4] and "order-3" in lines[4]
    assert "..." in lines[4], "long error messages are truncated in the table"
    assert "4111" not in res.stdout

    res = run_cli(kafka.bootstrap, "dlq", "show", dlq, "--json", "--values", "--key", "order-2")
    assert res.returncode == 0, res.stderr
    [r] = [json.loads(line) for line in res.stdout.splitlines()]
    assert r["value"] == SECRET.decode() and r["headers"] == [{"name": "tenant", "value": "secret-tenant"}]

    res = run_cli(kafka.bootstrap, "dlq", "show", dlq, "--limit", "2")
    assert res.returncode == 0, res.stderr
    assert len([ln for ln in res.stdout.splitlines() if ln.startswith(("0:", "1:", "2:"))]) == 2
