"""A reliable producer for DLQ, quarantine, retry and replay records.

Idempotent with ``acks=all``: a record counts as written only when every in-sync replica has it. Each
``send`` returns a future resolved by the delivery report, so the runtime commits a source offset only
after the write it depends on is acknowledged. A daemon thread serves delivery reports.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from confluent_kafka import KafkaError, Message

from streamguard.errors import KafkaOperationError
from streamguard.kafka.clients import make_producer

RELIABLE_DEFAULTS = {"acks": "all", "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 30000,
                     "socket.timeout.ms": 15000,
                     "max.in.flight.requests.per.connection": 5}


class ReliableProducer:
    """Produce with acknowledgement futures; ``close`` flushes."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._producer = make_producer({**RELIABLE_DEFAULTS, **config})
        self._stop = threading.Event()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="streamguard-producer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records sent but not yet acknowledged or failed."""
        return self._pending

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> Future[tuple[int, int]]:
        """Produce one record; the future gives (partition, offset) or raises :class:`KafkaOperationError`."""
        fut: Future[tuple[int, int]] = Future()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            with self._lock:
                self._pending -= 1
            if err is not None:
                fut.set_exception(KafkaOperationError(f"write to {topic} failed: {err.str()}"))
            else:
                fut.set_result((msg.partition() or 0, msg.offset() or 0))

        kwargs: dict[str, Any] = {"value": value, "key": key, "headers": headers, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        with self._lock:
            self._pending += 1
        try:
            self._producer.produce(topic, **kwargs)
        except BufferError as exc:
            with self._lock:
                self._pending -= 1
            fut.set_exception(KafkaOperationError(f"producer queue full writing to {topic}: {exc}"))
        except Exception as exc:
            with self._lock:
                self._pending -= 1
            fut.set_exception(KafkaOperationError(f"write to {topic} failed: {exc}"))
        return fut

    def flush(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> int:
        """Flush and stop; returns the number of records still undelivered."""
        left = self.flush(timeout)
        self._stop.set()
        self._thread.join(5)
        del self._producer  # destroys the librdkafka handle now, not at some later garbage collection
        return left
