"""The Python peers of the benchmark: aiokafka, faststream, quixstreams and sentry-arroyo.

Each runner consumes ``n`` messages of ``topic`` with a fresh consumer group, at-least-once (offsets committed
only after the message is processed), in the peer's own idiomatic way, and returns a :class:`Measurement`
timed from the first message the handler sees until the n-th one is processed. They are installed by the
``bench`` extra (``pip install -e '.[bench]'``); a peer that is not installed, or cannot run here, reports an
error instead of a number.

Handlers: ``sleep == 0`` is the no-op handler; otherwise an I/O wait of ``sleep`` seconds (``asyncio.sleep``
for the asyncio peers, ``time.sleep`` in threads for the others) with ``concurrency`` messages in flight where
the peer offers concurrency.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("benchmarks.peers")


@dataclass
class Measurement:
    count: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    commits: int | None = None  # commit requests in the window, where the peer lets us count them
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Clock:
    """First message seen / n-th message processed (thread-safe: arroyo's thread pool calls it concurrently)."""

    def __init__(self, n: int, counts_commits: bool = False) -> None:
        self.n = n
        self.counts_commits = counts_commits
        self.count = 0
        self.t0: float | None = None
        self.cpu0 = 0.0
        self.t1: float | None = None
        self.cpu1 = 0.0
        self.commits0 = 0
        self.commits1 = 0
        self.commits = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def first(self) -> None:
        if self.t0 is None:
            with self._lock:
                if self.t0 is None:
                    self.cpu0, self.commits0 = time.process_time(), self.commits
                    self.t0 = time.perf_counter()

    def processed(self, k: int = 1) -> bool:
        """Count ``k`` processed messages; True once (when the count reaches n)."""
        with self._lock:
            before = self.count
            self.count += k
            if before < self.n <= self.count:
                self.t1 = time.perf_counter()
                self.cpu1, self.commits1 = time.process_time(), self.commits
                self.done.set()
                return True
        return False

    def measurement(self, timeout: float) -> Measurement:
        m = Measurement()
        if self.t0 is not None and self.t1 is not None:
            m.count, m.seconds, m.cpu = self.n, self.t1 - self.t0, self.cpu1 - self.cpu0
            m.commits = self.commits1 - self.commits0 if self.counts_commits else None
        else:
            m.count = self.count
            m.error = f"only {self.count}/{self.n} messages within {timeout:.0f}s"
        return m


def _group(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------- aiokafka
def run_aiokafka(name: str, bootstrap: str, topic: str, n: int, sleep: float, concurrency: int,
                 timeout: float) -> Measurement:
    """``getmany`` batches, processed (no-op, or per-key chains with ``concurrency`` keys at once), then the
    processed offsets committed explicitly (``enable_auto_commit=False``), at most once a second like the raw
    loop (plus once at the end)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    clock = Clock(n, counts_commits=True)

    async def main() -> None:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=_group(name),
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        sem = asyncio.Semaphore(concurrency)

        async def chain(records: list[Any]) -> None:  # one key's records, in offset order
            for _r in records:
                async with sem:
                    await asyncio.sleep(sleep)

        def noop(value: bytes | None) -> None:
            pass

        pending: dict[TopicPartition, int] = {}
        next_commit = time.monotonic() + 1.0
        deadline = time.monotonic() + timeout
        try:
            while not clock.done.is_set() and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                if not batches:
                    continue
                clock.first()
                if sleep:
                    by_key: dict[bytes | None, list[Any]] = collections.defaultdict(list)
                    for records in batches.values():
                        for r in records:
                            by_key[r.key].append(r)
                    await asyncio.gather(*(chain(rs) for rs in by_key.values()))
                else:  # the no-op handler is called for every record, as in the raw loop and the other systems
                    for records in batches.values():
                        for r in records:
                            noop(r.value)
                for tp, records in batches.items():
                    pending[tp] = records[-1].offset + 1
                    if clock.processed(len(records)):
                        break
                if pending and (clock.done.is_set() or time.monotonic() >= next_commit):
                    await consumer.commit(dict(pending))
                    clock.commits += 1
                    pending.clear()
                    next_commit = time.monotonic() + 1.0
        finally:
            await consumer.stop()

    asyncio.run(main())
    return clock.measurement(timeout)


# --------------------------------------------------------------------------------------------- faststream
def run_faststream(name: str, bootstrap: str, topic: str, n: int, sleep: float, workers: int,
                   timeout: float) -> Measurement:
    """A ``KafkaBroker`` subscriber with ``ack_policy=AckPolicy.ACK`` (auto-commit off; each message is
    acknowledged, i.e. its consumer's offsets committed, after the handler returns), run in-process.

    ``workers > 1`` uses ``max_workers``: with an ack-after-processing policy faststream makes that one consumer
    per worker in the group (``ConcurrentBetweenPartitionsSubscriber``), so concurrency is capped by the
    partition count. The broker's per-message logging is off (``logger=None``)."""
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    clock = Clock(n)

    async def main() -> None:
        broker = KafkaBroker(bootstrap, logger=None)
        opts: dict[str, Any] = {"group_id": _group(name), "auto_offset_reset": "earliest",
                                "ack_policy": AckPolicy.ACK}
        if workers > 1:
            opts["max_workers"] = workers

        if sleep:
            async def handle(body: bytes) -> None:
                clock.first()
                await asyncio.sleep(sleep)
                clock.processed()
        else:
            async def handle(body: bytes) -> None:
                clock.first()
                clock.processed()

        broker.subscriber(topic, **opts)(handle)
        await broker.start()
        try:
            deadline = time.monotonic() + timeout
            while not clock.done.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            await broker.stop()

    asyncio.run(main())
    return clock.measurement(timeout)


# --------------------------------------------------------------------------------------------- quixstreams
def run_quixstreams(name: str, bootstrap: str, topic: str, n: int, sleep: float, timeout: float) -> Measurement:
    """``Application(commit_interval=1.0, processing_guarantee="at-least-once")`` with a StreamingDataFrame
    over the topic (bytes values) whose ``update`` is the handler; ``app.stop()`` at the count. Quix Streams
    processes the messages of an application one at a time (no per-message concurrency)."""
    from quixstreams import Application

    clock = Clock(n)
    with tempfile.TemporaryDirectory(prefix="bench-quix-") as state_dir:
        app = Application(broker_address=bootstrap, consumer_group=_group(name), auto_offset_reset="earliest",
                          commit_interval=1.0, processing_guarantee="at-least-once", state_dir=state_dir,
                          loglevel="WARNING", auto_create_topics=False, use_changelog_topics=False)
        sdf = app.dataframe(app.topic(topic, value_deserializer="bytes", key_deserializer="bytes"))

        def handle(value: bytes) -> None:
            clock.first()
            if sleep:
                time.sleep(sleep)
            if clock.processed():
                app.stop()

        sdf.update(handle)
        timer = threading.Timer(timeout, app.stop)
        timer.daemon = True
        timer.start()
        try:
            app.run()
        finally:
            timer.cancel()
    return clock.measurement(timeout)


# --------------------------------------------------------------------------------------------- arroyo
def run_arroyo(name: str, bootstrap: str, topic: str, n: int, sleep: float, concurrency: int,
               timeout: float) -> Measurement:
    """A ``StreamProcessor`` over arroyo's ``KafkaConsumer`` with the strategy ``RunTask(handler) ->
    CommitOffsets`` (or ``RunTaskInThreads(handler, concurrency)`` for the I/O handler: concurrent, results
    committed in offset order, but no per-key ordering) and the ``ONCE_PER_SECOND`` commit policy."""
    from arroyo.backends.kafka import KafkaConsumer
    from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
    from arroyo.commit import ONCE_PER_SECOND
    from arroyo.processing import StreamProcessor
    from arroyo.processing.strategies import CommitOffsets, ProcessingStrategyFactory, RunTask, RunTaskInThreads
    from arroyo.types import Topic

    clock = Clock(n)
    holder: list[Any] = []

    def handle(message: Any) -> None:
        clock.first()
        if sleep:
            time.sleep(sleep)
        if clock.processed():
            holder[0].signal_shutdown()

    class Factory(ProcessingStrategyFactory):  # type: ignore[type-arg]
        def create_with_partitions(self, commit: Any, partitions: Any) -> Any:
            if sleep and concurrency > 1:
                return RunTaskInThreads(handle, concurrency=concurrency, max_pending_futures=concurrency * 10,
                                        next_step=CommitOffsets(commit))
            return RunTask(handle, CommitOffsets(commit))

    config = build_kafka_consumer_configuration({}, group_id=_group(name), auto_offset_reset="earliest",
                                                bootstrap_servers=[bootstrap], enable_auto_commit=False)
    config["log_level"] = 3
    consumer = KafkaConsumer(config)
    processor = StreamProcessor(consumer, Topic(topic), Factory(), ONCE_PER_SECOND)
    holder.append(processor)
    timer = threading.Timer(timeout, processor.signal_shutdown)
    timer.daemon = True
    timer.start()
    try:
        processor.run()
    finally:
        timer.cancel()
    return clock.measurement(timeout)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("aiokafka", "faststream", "quixstreams", "sentry-arroyo"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out
