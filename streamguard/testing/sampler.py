"""An independent sampler of a group's committed offsets (every ~200 ms).

It watches the commits from the outside, the way the checker needs: it knows nothing of the runtime.
It reads through a never-subscribed consumer's ``committed()`` (an OffsetFetch that does not join the
group) because AdminClient.list_consumer_group_offsets crashes librdkafka 2.16 when the group's
coordinator is not yet known (confluent-kafka-python issue 1982).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition


class CommitSampler:
    """Record ``(t, partition, offset)`` whenever the committed offset of a partition changes."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, interval: float = 0.2) -> None:
        self.reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                                "log_level": 0})
        self.group, self.topic, self.partitions, self.interval = group, topic, partitions, interval
        self.samples: list[tuple[float, int, int]] = []
        self.latest: dict[int, int] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-sampler", daemon=True)

    def sample_once(self) -> dict[int, int]:
        res: Any = self.reader.committed([TopicPartition(self.topic, p) for p in range(self.partitions)], timeout=5)
        return {tp.partition: tp.offset for tp in res if tp.offset >= 0}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                latest = self.sample_once()
                now = time.time()  # dated on arrival: a slow answer can never look like an early commit
                for p, off in latest.items():
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
        self.reader.close()

    def max_committed(self, partition: int) -> int:
        return max((o for _, p, o in self.samples if p == partition), default=-1)
