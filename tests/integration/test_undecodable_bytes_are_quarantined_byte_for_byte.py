"""Failure handling: undecodable bytes get zero handler attempts and are quarantined byte for byte."""

from __future__ import annotations

import msgspec

from streamguard import App, Settings
from streamguard.core.envelope import parse_envelope
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


class Order(msgspec.Struct):
    order_id: str
    amount: int


def test_undecodable_and_schema_violations_go_to_quarantine(kafka, new_topic):
    topic = new_topic(partitions=1)
    garbage = b"\xff\xfe\x00not json at all\x80"
    wrong_schema = b'{"order_id": 5, "amount": "ten"}'
    records = [(b"a", b'{"order_id": "o1", "amount": 10}'), (b"b", garbage), (b"c", wrong_schema),
               (b"d", b'{"order_id": "o2", "amount": 20}')]
    produce_all(kafka.bootstrap, topic, records)
    calls: list[Order] = []
    app = App(f"quar-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, model=Order)
    def handle(order: Order, ctx) -> None:
        calls.append(order)

    with running(app) as worker:
        wait_until(lambda: worker.stats["quarantined"] == 2 and len(calls) == 2, 60)
    assert [o.order_id for o in calls] == ["o1", "o2"]
    recs = consume_n(kafka.bootstrap, f"{topic}.quarantine", 2, timeout=30)
    assert sorted(r.value() for r in recs) == sorted([garbage, wrong_schema])
    for r in recs:
        env = parse_envelope(r.headers())
        assert env.attempts == 0
        assert env.reason == "quarantine"
        assert env.error_type in ("msgspec.DecodeError", "msgspec.ValidationError"), env.error_type
