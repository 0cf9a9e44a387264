"""Foundation: on 3 nodes with acks=all, SIGKILLing a node mid-stream loses no acknowledged message."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from tests.kafka_helpers import consume_n

pytestmark = pytest.mark.cluster


def test_acked_messages_survive_sigkill_and_restart_of_a_node(kafka_cluster, new_topic):
    topic = new_topic(partitions=3, bootstrap=kafka_cluster.bootstrap, replication=3,
                      config={"min.insync.replicas": "2"})
    acked: set[bytes] = set()
    lock = threading.Lock()

    def cb(err, msg):
        if err is None:
            with lock:
                acked.add(msg.value())

    p = Producer({"bootstrap.servers": kafka_cluster.bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 2, "message.timeout.ms": 60000})
    victim = kafka_cluster.node(2)
    for i in range(3000):
        if i == 1000:
            victim.kill()
        if i == 2000:
            victim.start()
        p.produce(topic, key=str(i % 17).encode(), value=f"m{i}".encode(), on_delivery=cb)
        p.poll(0)
        if i % 100 == 0:
            time.sleep(0.02)
    assert p.flush(90) == 0
    assert len(acked) > 2500, f"only {len(acked)} acknowledged"
    got = {m.value() for m in consume_n(kafka_cluster.bootstrap, topic, len(acked), timeout=90)}
    assert acked - got == set(), f"lost {len(acked - got)} acknowledged messages"
