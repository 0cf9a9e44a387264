"""`make demo`: start a local Apache Kafka, push a small workload through it and stop.

This grows into the full streamguard demo (retries, DLQ, quarantine, metrics) as the runtime lands.
"""

from __future__ import annotations

import time

from streamguard.testing import kafka_backend
from streamguard.testing.pytest_plugin import create_topic


def main() -> None:
    from confluent_kafka import Consumer, Producer

    t0 = time.monotonic()
    backend = kafka_backend(1)
    try:
        print(f"Kafka up at {backend.bootstrap} in {time.monotonic() - t0:.1f}s")
        topic = create_topic(backend.bootstrap, "demo-orders", partitions=3)
        p = Producer({"bootstrap.servers": backend.bootstrap, "acks": "all", "enable.idempotence": True})
        for i in range(10):
            p.produce(topic, key=f"order-{i}".encode(), value=f'{{"id": {i}}}'.encode())
        p.flush(30)
        c = Consumer({"bootstrap.servers": backend.bootstrap, "group.id": "demo", "auto.offset.reset": "earliest"})
        c.subscribe([topic])
        got = 0
        while got < 10:
            for m in c.consume(10, 1.0):
                if m.error() is None:
                    got += 1
                    print(f"consumed {m.topic()}[{m.partition()}]@{m.offset()} key={m.key()!r}")
        c.close()
        print(f"done: produced 10, consumed {got}")
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
