"""One assigned partition's state: offsets, bulkhead, and the fence that makes late results harmless.

A new assignment always gets a new ``PartitionState`` (with a new epoch). Work started under an old
assignment keeps a reference to the old object; once it is ``revoked`` every completion it reports is
ignored, so a result that arrives after the partition moved on can never be committed.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from streamguard.core.offsets import OffsetTracker
from streamguard.core.scheduler import KeyScheduler

if TYPE_CHECKING:
    from streamguard.app import HandlerSpec
    from streamguard.runtime.claimed_lane import Chunk

_epochs = itertools.count(1)


class Flow:
    """Backpressure counters of one assigned partition, shared by the two threads.

    The poll thread hands over only as much as the partition's budget allows (``handed - released``),
    keeps the rest fetched in ``holding``, and pauses the partition only when ``holding`` is full too:
    pausing makes librdkafka drop its prefetched messages, so it is the last resort, not the first;
    the loop thread adds every message that leaves (resolved, skipped, dropped) to ``released``. Each
    counter has a single writer, so no lock is needed.
    """

    __slots__ = ("handed", "holding", "limit", "needs_resume", "paused", "released")

    def __init__(self, limit: int) -> None:
        self.holding: deque[Any] = deque()  # fetched, not yet handed over (poll thread only)
        self.handed = 0
        self.released = 0
        self.limit = limit
        self.paused = False
        self.needs_resume = True  # a fresh assignment must not inherit a pause from an earlier one

    @property
    def buffered(self) -> int:
        return self.handed - self.released


class LaneJob:
    """One batch of a partition-serial sync handler running on a pool thread; watched for timeouts."""

    __slots__ = ("abandoned", "chunk", "current_started", "done", "dupes", "extend_max", "extended", "gated", "lock",
                 "more", "running", "started", "stop")

    def __init__(self) -> None:
        self.started = time.monotonic()
        # runs of the partition dispatched while the job runs, appended to its batch by the lane itself;
        # None once the job no longer takes any
        self.more: list[list[Any]] | None = None
        self.extended = 0  # times it did (worker.stats["lane_extended"])
        self.extend_max = 0  # batch size past which it stops taking more
        self.done = 0  # messages of the batch resolved (with a store: their completions written)
        self.current_started = 0.0
        self.stop = False
        self.abandoned = False
        self.lock = threading.Lock()  # guards ``more`` (the loop appends, the lane takes)
        # with an idempotency store (claimed_lane.py) and a timeout: {batch index: start} of the message the
        # handler runs; the lane when it returns and the watchdog when it expires race to pop it (atomic under
        # the GIL), and only the winner settles the chunk
        self.running: dict[int, float] = {}
        self.gated = False  # holds a shared slot of the worker's solo gate (with a store), released when it ends
        self.dupes = 0  # resolved as duplicates (key already DONE): no handler call
        self.chunk: Chunk | None = None  # the claimed chunk the lane is running, not yet settled


class PartitionState:
    """Offsets and scheduling of one (topic, partition) under one assignment epoch."""

    __slots__ = ("drained", "draining", "epoch", "fast", "flow", "lane", "lane_chunk", "lane_gate_wait", "lane_job",
                 "partition", "progress_at", "revoked", "scheduler", "spec", "topic", "tracker")

    def __init__(self, spec: HandlerSpec, partition: int, committed: int | None, preresolved: set[int],
                 flow: Flow | None = None) -> None:
        self.topic = spec.topic
        self.partition = partition
        self.spec = spec
        self.epoch = next(_epochs)
        self.tracker = OffsetTracker(committed, preresolved)
        self.scheduler: KeyScheduler[Any] = KeyScheduler(spec.concurrency, spec.max_buffered)
        self.revoked = False
        self.draining = False
        self.flow = flow or Flow(spec.max_buffered)
        self.progress_at = 0.0  # monotonic time of the last resolution (or of starting from idle)
        self.fast = False  # set by the worker: async handler without store/breakers -> one coroutine per message
        self.lane = False  # set by the worker: run this partition's messages in batches on one thread
        self.lane_job: LaneJob | None = None
        self.lane_gate_wait = False  # a task waits for the solo gate to start this partition's lane
        self.lane_chunk = 100  # keys the claimed lane claims per transaction (adapted to the handler's speed)
        self.drained: asyncio.Event | None = None

    @property
    def idle(self) -> bool:
        return self.scheduler.buffered == 0

    def __repr__(self) -> str:
        return (f"<PartitionState {self.topic}[{self.partition}] epoch={self.epoch} "
                f"buffered={self.scheduler.buffered} commit={self.tracker.committable()}>")
