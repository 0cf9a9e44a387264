"""Small produce/consume helpers for integration tests (real broker)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, Producer


def produce_all(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]],
                headers: list[tuple[str, bytes]] | None = None, partition: int | None = None,
                extra: dict[str, Any] | None = None) -> list[tuple[int, int]]:
    """Produce with acks=all and idempotence; return (partition, offset) of every record, in produce order."""
    acked: dict[int, tuple[int, int]] = {}
    errors: list[Any] = []

    def callback(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                acked[i] = (msg.partition(), msg.offset())

        return cb

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                  **(extra or {})})
    for i, (key, value) in enumerate(records):
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": callback(i)}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(60)
    assert remaining == 0, f"{remaining} records not delivered"
    assert not errors, errors
    return [acked[i] for i in range(len(acked))]


def consume_n(bootstrap: str, topic: str, n: int, timeout: float = 60.0, group: str | None = None) -> list[Any]:
    """Read ``n`` records from the start of ``topic`` (fresh group unless given)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group or f"reader-{time.monotonic_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                if m.error() is None:
                    out.append(m)
    finally:
        c.close()
    return out
