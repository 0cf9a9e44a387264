"""Foundation: a 1-node local Apache Kafka serves produce and a committing consumer group."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from tests.kafka_helpers import produce_all


def test_produce_then_consume_with_group_commits(kafka, new_topic):
    topic = new_topic(partitions=3)
    acked = produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(300)])
    assert len(acked) == 300
    group = f"g-{topic}"
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    seen = set()
    try:
        while len(seen) < 300:
            for m in c.consume(100, 1.0):
                assert m.error() is None
                seen.add(m.value())
        c.commit(asynchronous=False)
        committed = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    finally:
        c.close()
    assert seen == {f"v{i}".encode() for i in range(300)}
    assert sum(tp.offset for tp in committed) == 300
