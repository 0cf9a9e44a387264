"""One assigned partition's state: offsets, bulkhead, and the fence that makes late results harmless.

A new assignment always gets a new ``PartitionState`` (with a new epoch). Work started under an old
assignment keeps a reference to the old object; once it is ``revoked`` every completion it reports is
ignored, so a result that arrives after the partition moved on can never be committed.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

from streamguard.core.offsets import OffsetTracker
from streamguard.core.scheduler import KeyScheduler

if TYPE_CHECKING:
    from streamguard.app import HandlerSpec

_epochs = itertools.count(1)


class PartitionState:
    """Offsets and scheduling of one (topic, partition) under one assignment epoch."""

    __slots__ = ("drained", "draining", "epoch", "last_committed", "partition", "paused", "revoked", "scheduler",
                 "spec", "topic", "tracker")

    def __init__(self, spec: HandlerSpec, partition: int, committed: int | None, preresolved: set[int]) -> None:
        self.topic = spec.topic
        self.partition = partition
        self.spec = spec
        self.epoch = next(_epochs)
        self.tracker = OffsetTracker(committed, preresolved)
        self.scheduler: KeyScheduler[Any] = KeyScheduler(spec.concurrency, spec.max_buffered)
        self.revoked = False
        self.draining = False
        self.paused = False
        self.drained: asyncio.Event | None = None
        self.last_committed: tuple[int, str] | None = None

    @property
    def idle(self) -> bool:
        return self.scheduler.buffered == 0

    def __repr__(self) -> str:
        return (f"<PartitionState {self.topic}[{self.partition}] epoch={self.epoch} "
                f"buffered={self.scheduler.buffered} commit={self.tracker.committable()}>")
