"""A producer helper that numbers records per partition, so a message lost before Kafka is visible.

Each record gets ``streamguard.seq = "<producer-id>:<n>"`` with n counting up per partition; workers with
``Settings(detect_gaps=True)`` report jumps as ``streamguard_sequence_gaps_total`` and a log line.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from typing import Any

from streamguard.kafka.clients import make_producer
from streamguard.runtime.gaps import SEQ_HEADER


class SequencedProducer:
    """Idempotent ``acks=all`` producer that picks the partition itself (crc32 of the key) and stamps it."""

    def __init__(self, config: dict[str, Any], partitions: int, producer_id: str | None = None) -> None:
        self.producer = make_producer({"acks": "all", "enable.idempotence": True, "linger.ms": 5, **config})
        self.partitions = partitions
        self.producer_id = producer_id or uuid.uuid4().hex[:8]
        self._next: dict[tuple[str, int], int] = {}

    def partition_for(self, key: bytes | None) -> int:
        return zlib.crc32(key or b"") % self.partitions

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None, on_delivery: Callable[..., Any] | None = None,
                skip: bool = False) -> int:
        """Stamp and send one record; ``skip=True`` burns a sequence number without sending (a simulated loss)."""
        partition = self.partition_for(key)
        n = self._next.get((topic, partition), 0)
        self._next[(topic, partition)] = n + 1
        if skip:
            return partition
        seq = (SEQ_HEADER, f"{self.producer_id}:{n}".encode())
        stamped: list[tuple[str, str | bytes | None]] = [*(headers or []), seq]
        self.producer.produce(topic, value=value, key=key, headers=stamped, partition=partition,
                              on_delivery=on_delivery)
        self.producer.poll(0)
        return partition

    def flush(self, timeout: float = 30.0) -> int:
        return int(self.producer.flush(timeout))
