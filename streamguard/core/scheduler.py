"""Per-key ordering inside one partition, with a bounded in-flight budget: the partition's bulkhead.

Messages with the same key run one at a time, in the order they were submitted (offset order);
different keys run concurrently up to ``concurrency``. ``max_buffered`` bounds everything the partition
holds (running + waiting): when it is reached the runtime pauses the partition, so memory stays bounded
and one slow key or partition cannot starve the others.

A running item stays at the head of its key's queue until :meth:`KeyScheduler.finish`, so a retry that
waits for its backoff keeps later messages of that key behind it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class KeyScheduler(Generic[T]):
    """Key-ordered, concurrency-bounded scheduling of one partition's messages."""

    __slots__ = ("_queues", "_ready", "buffered", "concurrency", "max_buffered", "running")

    def __init__(self, concurrency: int, max_buffered: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_buffered < concurrency:
            raise ValueError(f"max_buffered ({max_buffered}) must be >= concurrency ({concurrency})")
        self.concurrency = concurrency
        self.max_buffered = max_buffered
        self._queues: dict[Hashable, deque[T]] = {}
        self._ready: deque[Hashable] = deque()
        self.running = 0
        self.buffered = 0

    @property
    def is_full(self) -> bool:
        """True when the partition should be paused."""
        return self.buffered >= self.max_buffered

    def submit(self, key: Hashable, item: T) -> None:
        """Queue ``item`` behind earlier items of the same key."""
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque((item,))
            self._ready.append(key)
        else:
            queue.append(item)
        self.buffered += 1

    def submit_many(self, key: Hashable, items: list[T]) -> None:
        """:meth:`submit` for several items of one key, in order."""
        if not items:
            return
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque(items)
            self._ready.append(key)
        else:
            queue.extend(items)
        self.buffered += len(items)

    def take(self) -> list[tuple[Hashable, T]]:
        """Items that may start now: at most one per key, never more than ``concurrency`` running."""
        started: list[tuple[Hashable, T]] = []
        ready, queues = self._ready, self._queues
        while ready and self.running < self.concurrency:
            key = ready.popleft()
            started.append((key, queues[key][0]))
            self.running += 1
        return started

    def take_one(self) -> tuple[Hashable, T] | None:
        """The first of :meth:`take`, or None: for a task that goes on with the next message itself."""
        if self._ready and self.running < self.concurrency:
            key = self._ready.popleft()
            self.running += 1
            return key, self._queues[key][0]
        return None

    @property
    def startable(self) -> bool:
        """True when :meth:`take` would return something."""
        return bool(self._ready) and self.running < self.concurrency

    def finish(self, key: Hashable) -> None:
        """The running item of ``key`` is resolved: release its slot and make the key's next item ready."""
        queue = self._queues[key]
        queue.popleft()
        self.running -= 1
        self.buffered -= 1
        if queue:
            self._ready.append(key)
        else:
            del self._queues[key]

    def run_of(self, key: Hashable, limit: int) -> list[T]:
        """The first ``limit`` items of ``key``'s queue, head (running) first: a batch to run in order."""
        queue = self._queues[key]
        if len(queue) <= limit:
            return list(queue)
        return [queue[i] for i in range(limit)]

    def finish_many(self, key: Hashable, n: int, *, keep_running: bool = False) -> None:
        """``n`` items at the head of ``key`` are resolved; with ``keep_running`` the next head stays running."""
        queue = self._queues[key]
        if n == len(queue):
            queue.clear()
        else:
            for _ in range(n):
                queue.popleft()
        self.buffered -= n
        if keep_running:
            return
        self.running -= 1
        if queue:
            self._ready.append(key)
        else:
            del self._queues[key]

    def drain(self) -> list[T]:
        """Remove and return everything not yet started (revoke/lost); running items stay accounted."""
        dropped: list[T] = []
        running_keys = {k for k, q in self._queues.items() if k not in self._ready}
        for key, queue in list(self._queues.items()):
            keep_head = key in running_keys
            items = list(queue)[1:] if keep_head else list(queue)
            dropped.extend(items)
            if keep_head:
                head = queue[0]
                queue.clear()
                queue.append(head)
            else:
                del self._queues[key]
        self._ready.clear()
        self.buffered -= len(dropped)
        return dropped
