"""An independent sampler of a group's committed offsets (AdminClient, every ~200 ms).

It watches the commits from the outside, the way the checker needs: it knows nothing of the runtime.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient


class CommitSampler:
    """Record ``(t, partition, offset)`` whenever the committed offset of a partition changes."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, interval: float = 0.2) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        self.group, self.topic, self.partitions, self.interval = group, topic, partitions, interval
        self.samples: list[tuple[float, int, int]] = []
        self.latest: dict[int, int] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-sampler", daemon=True)

    def sample_once(self) -> dict[int, int]:
        req = ConsumerGroupTopicPartitions(self.group, [TopicPartition(self.topic, p) for p in range(self.partitions)])
        fut = self.admin.list_consumer_group_offsets([req], request_timeout=5)[self.group]
        res: Any = fut.result(timeout=10)
        return {tp.partition: tp.offset for tp in res.topic_partitions if tp.offset >= 0}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = time.time()
                for p, off in self.sample_once().items():
                    if self.latest.get(p) != off:
                        self.latest[p] = off
                        self.samples.append((now, p, off))
            except Exception:
                self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> CommitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def max_committed(self, partition: int) -> int:
        return max((o for _, p, o in self.samples if p == partition), default=-1)
