"""Throughput of streamguard vs a raw confluent-kafka consumer and the Python peers, on the same prefilled topics.

Usage::

    python -m benchmarks.run [--quick] [--runs N] [--messages N] [--backlog N] [--no-memory]
                             [--only NAME ...] [--profile NAME]

One broker (a ``LocalKafkaCluster(1)``, or ``STREAMGUARD_BOOTSTRAP``); the topics are created and filled
once (6 partitions, 100-byte values, keys from 10,000 keys: uniform, plus a Zipf(s=1.1) variant), their
log end offsets checked, then every system consumes the same topic with a fresh consumer group,
at-least-once (offsets committed after processing). A run is timed from the first message the system
receives until it has processed its message count. Systems are interleaved round-robin (A B C ... A B C)
so that a noisy neighbour hurts every system alike; results are medians with min/max, and every target is
a ratio of two numbers measured in the same run (reported as met / not met, never asserted).

The peers (aiokafka, faststream, quixstreams, sentry-arroyo: ``benchmarks/peers.py``, installed by the ``bench``
extra) run the same handlers at the same guarantee. After the rounds, a worker and the raw loop each consume a
1,000,000-record backlog in a subprocess (``benchmarks/rss_child.py``) for the peak-RSS and commit-rate targets,
and every streamguard target not met is explained by one profiled run of the system behind it.

Writes ``docs/benchmarks.md`` and ``benchmarks/results.json`` (not with ``--only`` or ``--profile``).
``--profile NAME`` runs one system once under cProfile (the worker's poll thread and event-loop thread
are profiled separately: ``python -m cProfile`` alone would only see the main thread, which just waits).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import cProfile
import datetime
import gc
import io
import itertools
import json
import logging
import math
import os
import platform
import pstats
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from benchmarks import peers
from streamguard import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results.json"

PARTITIONS = 6
VALUE_BYTES = 100
KEYS = 10_000
ZIPF_S = 1.1
SLEEP = 0.005  # the 5 ms handler
RUN_TIMEOUT = 150.0  # a run that has not finished by then is stopped and reported as failed
STALL_TIMEOUT = 20.0  # ... and so is a streamguard run that resolves nothing for this long
SEED = 20240601
RAW_BATCH = Settings().poll_batch  # records per consume() in the raw baseline: the worker's (raw-batch-500: 500)

# default message counts (``--messages`` sets the no-op count, the others scale with it); the 5 ms counts
# give timed windows of about a second or more at the measured rates
NOOP_MESSAGES = 300_000
KEY_MESSAGES = 40_000
SERIAL_MESSAGES = 3_000
RAW_SERIAL_MESSAGES = 600

log = logging.getLogger("benchmarks")


# peers (benchmarks/peers.py) whose handler is much slower per message get smaller counts
FASTSTREAM_NOOP_MESSAGES = 1_000  # it commits once per message (ack after each handler call)
FASTSTREAM_KEY_MESSAGES = 1_200

# the memory benchmark: a large backlog consumed by one worker in a subprocess
RSS_BACKLOG = 1_000_000
RSS_PREFILL_BUDGET = 60.0  # seconds; the backlog is cut short (and the report says so) if producing takes longer
RSS_SECONDS = 20.0
RSS_HANDLER_SLEEP = 0.001
RSS_LIMIT_MB = 200.0

# --------------------------------------------------------------------------------------------- systems
@dataclass(frozen=True)
class System:
    name: str
    kind: str  # "raw" | "sg" | a peer: "aiokafka" | "faststream" | "quixstreams" | "arroyo"
    messages: int
    topic: str = "uniform"  # "uniform" | "zipf" | "uniform-1k" (1 KB values)
    sleep: float = 0.0  # handler duration (0: no-op)
    sync: bool = False  # sync (thread pool) or async handler
    ordering: str = "key"
    concurrency: int = 1  # per partition
    sqlite: bool = False
    keys: int | None = None  # concurrent keys worker-wide, as configured
    bound: float | None = None  # theoretical msgs/s
    note: str = ""
    guarantee: str = "at-least-once"  # as run; with what the system cannot offer at this configuration
    librdkafka_defaults: bool = False  # raw only: librdkafka's fetch defaults instead of streamguard's
    batch: int = RAW_BATCH  # raw only: records per consume()


def make_systems(noop: int, key: int, serial: int, raw_serial: int, fs_noop: int, fs_key: int) -> list[System]:
    systems = [
        System("raw", "raw", noop, note=f"confluent_kafka.Consumer, consume({RAW_BATCH}, 0.1), store_offsets per "
               "message, streamguard's fetch settings and consume batch (the baseline)"),
        System("raw-batch-500", "raw", noop, batch=500,
               note="the same loop with consume(500, 0.1) (the baseline of earlier runs), for reference"),
        System("raw-librdkafka-defaults", "raw", noop, librdkafka_defaults=True,
               note="the same loop with librdkafka's fetch defaults (64 MB prefetch queue), for reference"),
        System("raw-5ms-serial", "raw", raw_serial, sleep=SLEEP, bound=1 / SLEEP,
               note="the raw loop calling time.sleep(0.005) per message"),
        System("sg-noop-partition", "sg", noop, sync=True, ordering="partition", concurrency=1,
               note='sync no-op, ordering="partition", concurrency=1'),
        System("sg-noop-key", "sg", noop, ordering="key", concurrency=64,
               note='async no-op, ordering="key", concurrency=64'),
        System("sg-noop-sqlite", "sg", noop // 3, ordering="key", concurrency=64, sqlite=True,
               note="sg-noop-key + SqliteStore idempotency (async fast path: a claim and a completion per key, "
               "batched per loop tick)"),
        System("sg-noop-partition-sqlite", "sg", noop, sync=True, ordering="partition", concurrency=1,
               sqlite=True, note="sg-noop-partition + SqliteStore idempotency (the claimed lane: a chunk of up to "
               "2,000 keys claimed as one range row in one statement, settled in one more); as many records as raw"),
        System("sg-5ms-serial", "sg", serial, sleep=SLEEP, ordering="partition", concurrency=1,
               bound=PARTITIONS / SLEEP, note='async 5 ms, ordering="partition" (6 partitions)'),
    ]
    for n in (16, 64, 100, 256):
        per = math.ceil(n / PARTITIONS)
        systems.append(System(f"sg-5ms-key-{n}", "sg", key, sleep=SLEEP, ordering="key", concurrency=per, keys=n,
                              bound=n / SLEEP, note=f'async 5 ms, ordering="key", concurrency={per}/partition'))
    systems.append(System("sg-5ms-key-100-zipf", "sg", key // 4, topic="zipf", sleep=SLEEP, ordering="key",
                          concurrency=math.ceil(100 / PARTITIONS), keys=100, bound=100 / SLEEP,
                          note=f"sg-5ms-key-100 on the Zipf(s={ZIPF_S}) topic"))
    # 1 KB values
    systems += [
        System("raw-1k", "raw", noop // 3, topic="uniform-1k", note="raw on the 1 KB-value topic"),
        System("sg-noop-partition-1k", "sg", noop // 3, topic="uniform-1k", sync=True, ordering="partition",
               concurrency=1, note="sg-noop-partition on the 1 KB-value topic"),
        System("sg-noop-key-1k", "sg", noop // 3, topic="uniform-1k", ordering="key", concurrency=64,
               note="sg-noop-key on the 1 KB-value topic"),
    ]
    # the peers (benchmarks/peers.py), same topics, same handlers, at-least-once
    systems += [
        System("aiokafka-noop", "aiokafka", noop,
               note="AIOKafkaConsumer.getmany(max_records=500), the no-op called per record, enable_auto_commit=False, "
               "commit(offsets) of the processed records at most once a second"),
        System("aiokafka-5ms-key-100", "aiokafka", key, sleep=SLEEP, concurrency=100, keys=100, bound=100 / SLEEP,
               note="getmany batch -> per-key chains of asyncio.sleep(0.005), 100 at once (Semaphore), "
               "gather, then commit"),
        System("faststream-noop", "faststream", fs_noop,
               note="KafkaBroker subscriber, ack_policy=AckPolicy.ACK (commit after each handler call), "
               "in-process, logger=None"),
        System("faststream-5ms-6", "faststream", fs_key, sleep=SLEEP, concurrency=PARTITIONS, keys=PARTITIONS,
               bound=PARTITIONS / SLEEP, note="same, async 5 ms, max_workers=6",
               guarantee="at-least-once; concurrency only 1 per partition (with ACK, max_workers is consumers "
               "in the group; more concurrency needs ACK_FIRST = at-most-once)"),
        System("quixstreams-noop", "quixstreams", noop,
               note='Application(commit_interval=1.0, processing_guarantee="at-least-once"), sdf.update(handler)'),
        System("quixstreams-5ms-serial", "quixstreams", raw_serial, sleep=SLEEP, bound=1 / SLEEP,
               note="same, time.sleep(0.005)", guarantee="at-least-once; no concurrency offered (serial)"),
        System("arroyo-noop", "arroyo", noop,
               note="StreamProcessor(KafkaConsumer, RunTask -> CommitOffsets, ONCE_PER_SECOND)"),
        System("arroyo-5ms-threads-100", "arroyo", key, sleep=SLEEP, concurrency=100, keys=100, bound=100 / SLEEP,
               note="RunTaskInThreads(time.sleep(0.005), concurrency=100) -> CommitOffsets",
               guarantee="at-least-once; no per-key ordering (any 100 messages at once)"),
    ]
    return systems


@dataclass
class Result:
    system: str
    round: int
    messages: int = 0  # processed in the timed window
    seconds: float = 0.0
    rate: float = 0.0
    cpu_us_per_msg: float = 0.0
    commits: int = 0
    commits_per_s: float | None = 0.0  # None: the peer does not let us count its commits
    rss_mb_after: float = 0.0
    wall_seconds: float = 0.0  # including start-up and shutdown
    error: str | None = None


# --------------------------------------------------------------------------------------------- topics
def key_bytes(i: int) -> bytes:
    return f"key-{i:05d}".encode()


def value_bytes(i: int, size: int = VALUE_BYTES) -> bytes:
    head = f"{i:012d}|".encode()
    return head + b"x" * (size - len(head))


def prefill(bootstrap: str, topic: str, indices: list[int], size: int = VALUE_BYTES) -> dict[tuple[int, int], int]:
    """Produce one record per key index (idempotent, acks=all); return delivered counts by (partition, key)."""
    counts: dict[tuple[int, int], int] = collections.Counter()
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            counts[(msg.partition(), int(msg.key()[4:]))] += 1

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 20, "batch.num.messages": 10_000, "log_level": 3})
    for i, k in enumerate(indices):
        while True:
            try:
                producer.produce(topic, value_bytes(i, size), key_bytes(k), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"prefill of {topic}: {left} undelivered, {len(errors)} errors ({errors[:3]})")
    return counts


def prefill_fast(bootstrap: str, topic: str, n: int, budget: float, rng: random.Random) -> tuple[int, float]:
    """Produce up to ``n`` records of VALUE_BYTES (uniform keys) as fast as possible (acks=1, no idempotence,
    linger.ms=50, large batches) for at most ``budget`` seconds; return (records in the log, seconds)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 50, "batch.num.messages": 100_000,
                         "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                         "queue.buffering.max.kbytes": 1_048_576, "log_level": 3})
    keys = [key_bytes(k) for k in range(KEYS)]
    value = b"x" * (VALUE_BYTES - 13)
    t0 = time.monotonic()
    produce, poll = producer.produce, producer.poll
    i = 0
    while i < n:
        try:
            produce(topic, b"%012d|" % i + value, keys[rng.randrange(KEYS)])
        except BufferError:
            poll(0.05)
            continue
        i += 1
        if i % 10_000 == 0:
            poll(0)
            if time.monotonic() - t0 > budget:
                break
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"prefill of {topic}: {left} undelivered")
    return log_end_total(bootstrap, topic), time.monotonic() - t0


def log_end_total(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-watermarks-{uuid.uuid4().hex[:8]}",
                  "log_level": 3})
    try:
        total = 0
        for p in range(PARTITIONS):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            total += high - low
        return total
    finally:
        c.close()


def zipf_indices(n: int, rng: random.Random) -> list[int]:
    cum = list(itertools.accumulate(1 / (r + 1) ** ZIPF_S for r in range(KEYS)))
    return rng.choices(range(KEYS), cum_weights=cum, k=n)


def keyed_bound(counts: dict[tuple[int, int], int], per_partition: int) -> tuple[float, dict[str, Any]]:
    """Best possible msgs/s for the whole topic with key ordering and ``per_partition`` concurrent keys."""
    by_part: dict[int, list[int]] = collections.defaultdict(list)
    for (p, _k), c in counts.items():
        by_part[p].append(c)
    worst = 0.0
    for cs in by_part.values():
        worst = max(worst, max(cs) * SLEEP, sum(cs) * SLEEP / per_partition)
    total = sum(counts.values())
    hottest = max(counts.values())
    return total / worst, {"hottest_key_share": hottest / total, "hottest_key_messages": hottest,
                           "largest_partition_share": max(sum(cs) for cs in by_part.values()) / total}


# --------------------------------------------------------------------------------------------- raw
def run_raw(system: System, bootstrap: str, topic: str, rnd: int) -> Result:
    res = Result(system.name, rnd)
    commits = [0]

    def on_commit(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is None:
            commits[0] += 1

    fetch = {} if system.librdkafka_defaults else {  # streamguard's fetch settings (Worker._consumer_config)
        "fetch.wait.max.ms": 100, "queued.max.messages.kbytes": 16384, "fetch.queue.backoff.ms": 20}
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-{system.name}-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky", **fetch, "on_commit": on_commit, "log_level": 3,
    })
    sleep = system.sleep

    def handle(value: bytes | None) -> None:
        if sleep:
            time.sleep(sleep)

    n = system.messages
    count = 0
    t0 = cpu0 = 0.0
    commits0 = 0
    started = False
    wall0 = time.monotonic()
    deadline = wall0 + RUN_TIMEOUT
    c.subscribe([topic])
    try:
        next_commit = time.monotonic() + 1.0
        while count < n and time.monotonic() < deadline:
            for m in c.consume(system.batch, 0.1):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("raw consumer: %s", m.error())
                    continue
                if not started:
                    started, t0, cpu0, commits0 = True, time.perf_counter(), time.process_time(), commits[0]
                handle(m.value())
                c.store_offsets(message=m)
                count += 1
                if count >= n:
                    break
                if sleep and time.monotonic() >= next_commit:  # a slow loop must still commit once a second
                    _raw_commit(c)
                    next_commit = time.monotonic() + 1.0
            if count < n and time.monotonic() >= next_commit:
                _raw_commit(c)
                next_commit = time.monotonic() + 1.0
        t1, cpu1, commits1 = time.perf_counter(), time.process_time(), commits[0]
        try:
            c.commit(asynchronous=False)
        except KafkaException as exc:
            log.warning("raw final commit: %s", exc)
    finally:
        c.close()
    if count < n:
        res.error = f"only {count}/{n} messages within {RUN_TIMEOUT:.0f}s"
    if started and t1 > t0:
        _fill(res, count, t1 - t0, cpu1 - cpu0, commits1 - commits0)
    res.wall_seconds = time.monotonic() - wall0
    return res


def _raw_commit(c: Consumer) -> None:
    try:
        c.commit(asynchronous=True)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET):
            log.warning("raw commit: %s", exc)


def _fill(res: Result, count: int, seconds: float, cpu: float, commits: int) -> None:
    res.messages = count
    res.seconds = seconds
    res.rate = count / seconds
    res.cpu_us_per_msg = cpu / count * 1e6
    res.commits = commits
    res.commits_per_s = commits / seconds


# --------------------------------------------------------------------------------------------- streamguard
class Probe:
    """Start (first handler call) and end (stats["ok"] reaching n) of a streamguard run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.t0: float | None = None
        self.cpu0 = 0.0
        self.commits0 = 0
        self.t1: float | None = None
        self.cpu1 = 0.0
        self.commits1 = 0
        self.done = threading.Event()
        self.stats: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        with self.lock:
            if self.t0 is None:
                self.cpu0, self.commits0 = time.process_time(), self.stats["commits_ok"]
                self.t0 = time.perf_counter()

    def end(self) -> None:
        self.t1 = time.perf_counter()
        self.cpu1, self.commits1 = time.process_time(), self.stats["commits_ok"]
        self.done.set()


class StopAtCounter(collections.Counter):  # type: ignore[type-arg]
    """``worker.stats`` that tells the probe the moment "ok" reaches n (no polling of the worker)."""

    def __init__(self, n: int, probe: Probe) -> None:
        super().__init__()
        self.n = n
        self.probe = probe

    def __setitem__(self, key: Any, value: Any) -> None:
        before = self.get(key, 0)
        super().__setitem__(key, value)
        if key == "ok" and before < self.n <= value:  # "ok" grows by whole batches: it may step over n
            self.probe.end()


def build_sg(system: System, bootstrap: str, topic: str, probe: Probe, workdir: Path) -> Any:
    from streamguard import App, Settings, SqliteStore

    store = SqliteStore(workdir / f"idem-{uuid.uuid4().hex[:8]}.db") if system.sqlite else None
    name = f"bench-{system.name}-{uuid.uuid4().hex[:8]}"
    app = App(name, bootstrap, idempotency=store, settings=Settings())
    opts: dict[str, Any] = {"ordering": system.ordering, "concurrency": system.concurrency}
    if not system.sleep:
        opts.update(max_deliveries=None, timeout=None)
    start = probe.start
    sleep = system.sleep

    if system.sync:
        def handle_sync(value: bytes) -> None:
            if probe.t0 is None:
                start()

        app.handler(topic, **opts)(handle_sync)
    elif sleep:
        async def handle_sleep(value: bytes) -> None:
            if probe.t0 is None:
                start()
            await asyncio.sleep(sleep)

        app.handler(topic, **opts)(handle_sleep)
    else:
        async def handle_noop(value: bytes) -> None:
            if probe.t0 is None:
                start()

        app.handler(topic, **opts)(handle_noop)
    return app


def run_sg(system: System, bootstrap: str, topic: str, rnd: int, workdir: Path,
           profile: dict[str, Any] | None = None) -> Result:
    res = Result(system.name, rnd)
    probe = Probe()
    app = build_sg(system, bootstrap, topic, probe, workdir)
    worker = app.worker(install_signals=False)
    worker.stats = probe.stats = StopAtCounter(system.messages, probe)
    if profile is not None:
        _profile_threads(worker, profile)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            if profile is not None:
                profile["poll thread"].runcall(worker.run)
            else:
                worker.run()
        except BaseException as exc:
            errors.append(exc)

    wall0 = time.monotonic()
    thread = threading.Thread(target=target, name=f"bench-{system.name}", daemon=True)
    thread.start()
    deadline = wall0 + RUN_TIMEOUT
    last_ok, last_change = -1, time.monotonic()
    while not probe.done.wait(0.2):
        now = time.monotonic()
        if worker.stats["ok"] != last_ok:
            last_ok, last_change = worker.stats["ok"], now
        if not thread.is_alive() or now > deadline or now - last_change > STALL_TIMEOUT:
            break
    if not probe.done.is_set():
        log.warning("%s: no progress (%d/%d resolved); partitions: %s", system.name, worker.stats["ok"],
                    system.messages, _describe(worker))
    worker.stop(hard=True)  # the count is reached: leave now (resolved offsets are still committed)
    thread.join(60)
    if thread.is_alive():
        res.error = "worker did not stop within 60 s"
    elif errors:
        res.error = f"worker crashed: {errors[0]!r}"
    elif not probe.done.is_set():
        res.error = f"stalled at {worker.stats['ok']}/{system.messages} messages"
    if probe.done.is_set() and probe.t0 is not None and probe.t1 is not None:
        _fill(res, system.messages, probe.t1 - probe.t0, probe.cpu1 - probe.cpu0, probe.commits1 - probe.commits0)
    res.wall_seconds = time.monotonic() - wall0
    return res


# --------------------------------------------------------------------------------------------- peers
def run_peer(system: System, bootstrap: str, topic: str, rnd: int) -> Result:
    res = Result(system.name, rnd)
    wall0 = time.monotonic()
    args = (system.name, bootstrap, topic, system.messages, system.sleep)
    try:
        if system.kind == "aiokafka":
            m = peers.run_aiokafka(*args, system.concurrency, RUN_TIMEOUT)
        elif system.kind == "faststream":
            m = peers.run_faststream(*args, system.concurrency, RUN_TIMEOUT)
        elif system.kind == "quixstreams":
            m = peers.run_quixstreams(*args, RUN_TIMEOUT)
        elif system.kind == "arroyo":
            m = peers.run_arroyo(*args, system.concurrency, RUN_TIMEOUT)
        else:
            raise ValueError(f"unknown kind {system.kind!r}")
    except Exception as exc:  # a peer that cannot run here is reported, not fatal
        log.warning("%s failed", system.name, exc_info=True)
        m = peers.Measurement(error=f"could not run: {exc!r}"[:300])
    res.error = m.error
    if m.error is None and m.seconds > 0:
        _fill(res, m.count, m.seconds, m.cpu, m.commits or 0)
        if m.commits is None:
            res.commits_per_s = None
    res.wall_seconds = time.monotonic() - wall0
    return res


def _describe(worker: Any) -> str:
    """Best-effort snapshot of the worker's partitions (read from another thread: diagnostics only)."""
    out = []
    for (_topic, p), st in sorted(dict(worker._states).items()):
        sc = st.scheduler
        out.append(f"[{p}] paused={st.paused} buffered={sc.buffered} running={sc.running} "
                   f"commit={st.tracker.committable()} last_fetched={getattr(st.tracker, '_last', '?')}")
    return "; ".join(out) + f"; stats={dict(worker.stats)}"


def _profile_threads(worker: Any, profile: dict[str, Any]) -> None:
    """Run the worker's event loop under its own profiler (benchmark-side; streamguard is unchanged)."""
    loop = worker._loop
    prof = profile["loop thread"]
    worker._loop_thread = threading.Thread(target=lambda: prof.runcall(loop.run_forever), name="streamguard-loop",
                                           daemon=True)
    # sync handlers and store calls run on the worker's thread pools: give each of their threads a profiler of
    # its own, merged per pool when the report is printed (the threads have ended by then)
    worker._pool.shutdown(wait=False)
    worker._pool = _profiled_pool(profile, "handler threads", worker.settings.sync_threads, "streamguard-handler")
    worker._store_pool.shutdown(wait=False)
    worker._store_pool = _profiled_pool(profile, "store threads", 4, "streamguard-store")


def _profiled_pool(profile: dict[str, Any], label: str, threads: int, name: str) -> Any:
    profiles: list[cProfile.Profile] = profile.setdefault(label, [])

    def start_thread_profile() -> None:
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()

    return concurrent.futures.ThreadPoolExecutor(threads, name, initializer=start_thread_profile)


# --------------------------------------------------------------------------------------------- isolation
def run_one(s: System, bootstrap: str, topic: str, rnd: int, workdir: Path,
            profile: dict[str, Any] | None = None) -> Result:
    if s.kind == "raw":
        r = run_raw(s, bootstrap, topic, rnd)
    elif s.kind == "sg":
        r = run_sg(s, bootstrap, topic, rnd, workdir, profile)
    else:
        r = run_peer(s, bootstrap, topic, rnd)
    gc.collect()  # free the finished run's clients now (not timed)
    r.rss_mb_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return r


def run_isolated(s: System, bootstrap: str, topic: str, rnd: int, workdir: Path) -> Result:
    """One run in a fresh interpreter: nothing a previous system left behind (a client some peer never
    closes keeps librdkafka threads alive: 7 extra OS threads after quixstreams here; later runs in the same
    process measured up to ~35% slower) can tax the next one, and every system starts from the same state."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        try:
            return pool.submit(run_one, s, bootstrap, topic, rnd, workdir).result(timeout=RUN_TIMEOUT + 120)
        except Exception as exc:  # a crashed or hung child: the run failed, the benchmark goes on
            return Result(s.name, rnd, error=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------- summary
def summarize(systems: list[System], results: list[Result], zipf_bound: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in systems:
        ok = [r for r in results if r.system == s.name and r.error is None and r.rate > 0]
        failed = [r.error for r in results if r.system == s.name and r.error is not None]
        if not ok:
            out[s.name] = {"runs": 0, "failed": failed}
            continue
        rates = [r.rate for r in ok]
        med = statistics.median(rates)
        entry = {
            "runs": len(ok), "failed": failed, "messages": s.messages, "median_rate": med, "min_rate": min(rates),
            "max_rate": max(rates), "spread_pct": (max(rates) - min(rates)) / med * 100,
            "cpu_us_per_msg": statistics.median(r.cpu_us_per_msg for r in ok),
            "commits_per_s": statistics.median(cs) if (cs := [r.commits_per_s for r in ok
                                                              if r.commits_per_s is not None]) else None,
            "bound": s.bound, "pct_of_bound": med / s.bound * 100 if s.bound else None,
        }
        if s.topic == "zipf" and zipf_bound:
            entry["zipf_bound"] = zipf_bound
            entry["pct_of_zipf_bound"] = med / zipf_bound * 100
        out[s.name] = entry
    raw = out.get("raw", {}).get("median_rate")
    for entry in out.values():
        if raw and entry.get("median_rate"):
            entry["vs_raw"] = entry["median_rate"] / raw
    return out


def paired(results: list[Result], a: str, b: str) -> list[float]:
    """Per-round ratios a/b (both measured in the same round)."""
    by = {(r.system, r.round): r.rate for r in results if r.error is None and r.rate > 0}
    rounds = sorted({r.round for r in results})
    return [by[(a, i)] / by[(b, i)] for i in rounds if (a, i) in by and (b, i) in by]

TARGETS = [
    ("no-op, partition-serial vs raw", "sg-noop-partition", "raw", None, 0.6),
    ("no-op + SqliteStore vs raw, partition-serial (claimed lane)", "sg-noop-partition-sqlite", "raw", None, 0.3),
    ("no-op + SqliteStore vs raw, key-level (async, a row per key)", "sg-noop-sqlite", "raw", None, 0.3),
    ("5 ms at 100 keys vs its bound (20,000 msg/s)", "sg-5ms-key-100", None, 100 / SLEEP, 0.75),
    ("5 ms: key-level (100) vs partition-serial", "sg-5ms-key-100", "sg-5ms-serial", None, 12.0),
    ("5 ms at 100 keys: Zipf vs uniform", "sg-5ms-key-100-zipf", "sg-5ms-key-100", None, 0.7),
]
PEER_KINDS = ("aiokafka", "faststream", "quixstreams", "arroyo")
SG_DEFAULT_NOOP = "sg-noop-key"  # streamguard's default handler configuration (ordering="key", concurrency=64)
COMMITS_BAND = (0.5, 1.5)  # "about one commit request per second"
# which system's profile explains a target that is not met
PROFILE_FOR = {"sg-noop-partition": "sg-noop-partition", "sg-noop-sqlite": "sg-noop-sqlite",
               "sg-noop-partition-sqlite": "sg-noop-partition-sqlite",
               "sg-5ms-key-100": "sg-5ms-key-100", "sg-5ms-key-100-zipf": "sg-5ms-key-100",
               SG_DEFAULT_NOOP: SG_DEFAULT_NOOP}


def fastest_peer(systems: list[System], summary: dict[str, Any]) -> str | None:
    cands = [s.name for s in systems if s.kind in PEER_KINDS and not s.sleep and s.topic == "uniform"
             and s.guarantee == "at-least-once" and summary.get(s.name, {}).get("median_rate")]
    return max(cands, key=lambda n: summary[n]["median_rate"]) if cands else None


def evaluate_targets(systems: list[System], summary: dict[str, Any], results: list[Result],
                     rss: dict[str, Any] | None) -> list[dict[str, Any]]:
    specs = list(TARGETS)
    peer = fastest_peer(systems, summary)
    if peer:
        specs.insert(1, ("no-op streamguard (default ordering) vs the fastest peer at the same guarantee",
                         SG_DEFAULT_NOOP, peer, None, 1.5))
        specs.insert(2, ("no-op streamguard (partition-serial, its fastest) vs the fastest peer",
                         "sg-noop-partition", peer, None, 1.5))
    rows = []
    for label, a, b, const, threshold in specs:
        num = summary.get(a, {}).get("median_rate")
        den = const if const is not None else summary.get(b or "", {}).get("median_rate")
        value = num / den if num and den else None
        per_round = [x / const for x in (r.rate for r in results if r.system == a and r.error is None and r.rate)] \
            if const is not None else paired(results, a, b or "")
        rows.append({"target": f"{label} (`{a}` / `{b or f'{const:,.0f} msg/s'}`)", "system": a, "value": value,
                     "shown": _num(value, ".2f") + "x" if value is not None else "-", "threshold": f"≥ {threshold:g}x",
                     "met": value is not None and value >= threshold, "per_round": per_round})
    if not peer:
        rows.insert(1, {"target": "no-op streamguard vs the fastest peer at the same guarantee", "system": None,
                        "value": None, "shown": "no peer ran", "threshold": "≥ 1.5x", "met": False, "per_round": []})
    if rss is not None:
        sg = rss.get("sg", {})
        hwm = sg.get("vmhwm_mb")
        rows.append({"target": f"peak RSS (VmHWM) of a worker with a {rss['backlog']:,}-message backlog on "
                     f"{PARTITIONS} partitions", "system": None, "value": hwm,
                     "shown": f"{hwm:.0f} MB" if hwm else f"failed: {sg.get('error')}",
                     "threshold": f"≤ {RSS_LIMIT_MB:.0f} MB", "met": bool(hwm) and hwm <= RSS_LIMIT_MB,
                     "per_round": []})
        cps = sg.get("commits_per_s")
        rows.append({"target": f"commit requests per second per worker (over {sg.get('seconds', 0):.0f} s at "
                     f"{_num(sg.get('rate'))} msg/s)", "system": None, "value": cps,
                     "shown": f"{cps:.2f}/s" if cps is not None else "-",
                     "threshold": f"{COMMITS_BAND[0]:g} - {COMMITS_BAND[1]:g} /s",
                     "met": cps is not None and COMMITS_BAND[0] <= cps <= COMMITS_BAND[1], "per_round": []})
    return rows


# --------------------------------------------------------------------------------------------- memory
def run_rss(bootstrap: str, rng: random.Random, backlog: int) -> dict[str, Any]:
    """Prefill a big backlog, then run the streamguard worker and the raw loop on it, each in a subprocess."""
    from streamguard.testing.pytest_plugin import create_topic

    topic = create_topic(bootstrap, f"bench-backlog-{uuid.uuid4().hex[:8]}", PARTITIONS)
    total, secs = prefill_fast(bootstrap, topic, backlog, RSS_PREFILL_BUDGET, rng)
    print(f"prefilled {topic}: {total:,} records in {secs:.1f}s (fast producer)", file=sys.stderr)
    out: dict[str, Any] = {"backlog": total, "requested": backlog, "prefill_seconds": secs, "topic": topic,
                           "seconds": RSS_SECONDS, "handler_sleep": RSS_HANDLER_SLEEP}
    for kind in ("sg", "raw"):
        out[kind] = _rss_child(kind, bootstrap, topic)
        e = out[kind]
        print(f"[memory] {kind:<4} VmHWM {_num(e.get('vmhwm_mb'), '.0f')} MB, {e.get('processed', 0):,} msgs in "
              f"{e.get('seconds', 0):.1f}s, {_num(e.get('commits_per_s'), '.2f')} commits/s "
              f"{e.get('error') or ''}", file=sys.stderr)
    return out


def _rss_child(kind: str, bootstrap: str, topic: str) -> dict[str, Any]:
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.rss_child", kind, bootstrap, topic, str(RSS_SECONDS),
           str(RSS_HANDLER_SLEEP)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    killer = threading.Timer(RSS_SECONDS + 150, proc.kill)  # everything stops by itself
    killer.start()
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:  # VmRSS once a second, for the record
        while not stop.wait(1.0):
            v = _proc_status_kb(proc.pid, "VmRSS")
            if v is not None:
                samples.append(round(v / 1024, 1))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        hwm = _proc_status_kb(proc.pid, "VmHWM")
        stop.set()
        proc.stdin.close()
        proc.wait(60)
    finally:
        killer.cancel()
        stop.set()
        if proc.poll() is None:
            proc.kill()
    try:
        res: dict[str, Any] = json.loads(line)
    except ValueError:
        res = {"error": f"child printed {line!r} (exit {proc.returncode})"}
    res["vmhwm_mb"] = hwm / 1024 if hwm else None
    res["vmrss_mb_samples"] = samples
    if res.get("seconds"):
        res["rate"] = res["processed"] / res["seconds"]
    return res


def _proc_status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------- profiles
WAITS = ("method 'consume' of", "method 'poll' of 'select.epoll'", "method 'get' of '_queue.SimpleQueue'",
         "method 'acquire' of '_thread.lock'", "method 'wait' of")  # blocking calls: idle time, not cost


def profile_text(profile: dict[str, Any], top: int = 15, sort: str = "cumulative") -> str:
    """pstats output per thread; with ``sort="tottime"`` the blocking waits are left out (and their total shown)."""
    parts = []
    for label, prof in profile.items():
        profs = prof if isinstance(prof, list) else [prof]
        if not profs:
            continue
        buf = io.StringIO()
        stats = pstats.Stats(profs[0], stream=buf)
        for extra in profs[1:]:
            stats.add(extra)
        if sort != "tottime":
            stats.sort_stats(sort).print_stats(top)
            parts.append(f"==== {label} ====\n{buf.getvalue().rstrip()}")
            continue
        rows = []
        waited = busy = 0.0
        for (file, line, fn), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            where = fn if file == "~" else f"{Path(file).name}:{line}({fn})"
            if any(w in where for w in WAITS):
                waited += tt
            else:
                busy += tt
                rows.append((tt, nc, ct, where))
        rows.sort(reverse=True)
        out = [f"==== {label} ({len(profs)} thread(s)): {busy:.2f} s busy, {waited:.2f} s blocked in waits "
               "(consume / epoll / queue / lock, left out) ====",
               f"{'tottime':>8} {'share':>6} {'ncalls':>8} {'cumtime':>8}  function"]
        for tt, nc, ct, where in rows[:top]:
            out.append(f"{tt:8.3f} {tt / busy * 100 if busy else 0:5.1f}% {nc:8d} {ct:8.3f}  {where}")
        parts.append("\n".join(out))
    return "\n\n".join(parts)


def profile_system(system: System, bootstrap: str, topic: str, workdir: Path) -> tuple[Result, str]:
    profile: dict[str, Any] = {"poll thread": cProfile.Profile(), "loop thread": cProfile.Profile()}
    r = run_sg(system, bootstrap, topic, 0, workdir, profile)
    gc.collect()
    return r, profile_text(profile, top=12, sort="tottime")


# --------------------------------------------------------------------------------------------- report
def machine_info(external: bool) -> dict[str, Any]:
    from streamguard.testing import KAFKA_VERSION

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__, "librdkafka": confluent_kafka.libversion()[0],
        "kafka": "external cluster (STREAMGUARD_BOOTSTRAP)" if external else f"Apache Kafka {KAFKA_VERSION}, "
                 "1 KRaft node (LocalKafkaCluster(1)) on the same machine",
        "platform": platform.platform(), "peers": peers.versions(),
    }


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def write_doc(path: Path, command: str, info: dict[str, Any], config: dict[str, Any], systems: list[System],
              summary: dict[str, Any], targets: list[dict[str, Any]], peak_rss_mb: float, total_s: float,
              zipf_stats: dict[str, Any], rss: dict[str, Any] | None, profiles: dict[str, str]) -> None:
    pv = info["peers"]
    lines = [
        "# Benchmarks",
        "",
        "Throughput of streamguard against a raw `confluent_kafka.Consumer` loop and the Python peers (aiokafka, "
        "faststream, quixstreams, sentry-arroyo), on one local broker, plus the memory of a worker facing a large "
        "backlog and its commit rate. Generated by `benchmarks/run.py`; raw numbers in `benchmarks/results.json`.",
        "",
        "```bash",
        "make bench   # = pip install -e '.[bench]' (+ quixstreams, see below), then:",
        command,
        "```",
        "",
        f"- date: {config['date']}",
        f"- machine: {info['nproc']} CPUs, {info['cpu']}; {info['platform']} (shared with other work)",
        f"- Python {info['python']}, confluent-kafka {info['confluent_kafka']}, librdkafka {info['librdkafka']}",
        f"- peers: aiokafka {pv['aiokafka']}, faststream {pv['faststream']}, quixstreams {pv['quixstreams']}, "
        f"sentry-arroyo {pv['sentry-arroyo']}. quixstreams 3.28.1 declares `confluent-kafka<2.13` while "
        "sentry-arroyo 2.48.0 needs `>=2.13.2` and streamguard is measured on the installed 2.16.1, so quixstreams "
        "is installed with `--no-deps` (its other requirements from the `bench` extra) and runs against "
        f"confluent-kafka {info['confluent_kafka']}: it ran without error here, but that pairing is not one its "
        "authors declare",
        f"- broker: {info['kafka']}",
        f"- runs: {config['runs']} per system, interleaved round-robin; total wall time {total_s:.0f} s; "
        f"peak RSS of the benchmark process {peak_rss_mb:.0f} MB",
        "",
        "## Method",
        "",
        f"- Topics are created and prefilled once with an idempotent `acks=all` producer: {PARTITIONS} partitions, "
        f"{VALUE_BYTES}-byte values, keys drawn uniformly from {KEYS:,} keys ({config['uniform_messages']:,} "
        f"records), the same with 1 KB values ({config['uniform-1k_messages']:,} records), and a Zipf(s={ZIPF_S}) "
        f"variant over the same keys ({config['zipf_messages']:,} records). The log end offsets are checked "
        "against the produced count before anything is timed.",
        "- Every run consumes the same topic from the start with a fresh group id, at-least-once (offsets "
        "committed only after processing). A run is timed from the first message the system's handler sees "
        "until it has processed its message count (systems with smaller counts read a prefix of the topic); "
        "start-up (group join) and shutdown are outside the window. The windows are long enough (300,000 "
        "records for the no-op systems, 40,000 for the 5 ms ones) to measure the steady state, not librdkafka's "
        "prefetch or the ramp-up.",
        "- The baseline `raw` loop uses the same librdkafka fetch settings and consume batch as the streamguard "
        "worker (`queued.max.messages.kbytes=16384`, `fetch.wait.max.ms=100`, `fetch.queue.backoff.ms=20`, "
        "`consume(2000)`), so the ratio is the framework's cost; `raw-batch-500` is the same loop with the "
        "500-record batch that earlier runs used as the baseline (the two are within the noise of each other here)."
        " `fetch.queue.backoff.ms` matters: with librdkafka's default (1000 ms) "
        "a full 16 MB queue postpones the next fetch by up to a second, and both the raw loop and streamguard "
        "were capped at ~131k msg/s here (an earlier version of this table compared the two in that state). "
        "`raw-librdkafka-defaults` shows the loop with librdkafka's own defaults (64 MB prefetch).",
        "- Streamguard runs with the default `Settings()` (commit_interval=1.0, poll_batch=2,000, "
        "max_inflight_total=60,000, max_inflight_bytes=64 MiB; "
        "per partition max_buffered = max(8 x concurrency, 10,000)). "
        "The no-op handlers use `max_deliveries=None, timeout=None`, the 5 ms handlers the defaults "
        "(`timeout=30`). The end of a streamguard run is the moment "
        "`worker.stats[\"ok\"]` reaches the count; the worker is then stopped.",
        "- `concurrency` is per partition: the key-level systems use `ceil(N/6)` per partition for N concurrent "
        "keys worker-wide and are compared with the bound N / 5 ms.",
        "- Peers (`benchmarks/peers.py`) run in the benchmark process, each in its own idiomatic way, with the same "
        "handlers: the no-op, and the 5 ms I/O wait at 100 concurrent messages where the peer offers concurrency. "
        "Where a peer cannot do that at the same guarantee, the table says so. faststream acknowledges (commits) "
        f"every message, so it gets {FASTSTREAM_NOOP_MESSAGES:,} / {FASTSTREAM_KEY_MESSAGES:,} messages.",
        "- CPU µs/msg is `time.process_time()` over the window divided by messages: the whole benchmark process "
        "(librdkafka threads included, the broker JVM excluded). commits/s is counted where the system lets us "
        "(`-` otherwise); the short windows make it coarse: the commit target is measured on "
        "the 20 s memory run below.",
        "- The machine is shared and has few cores, so absolute numbers are noisy; the targets are ratios of "
        "numbers measured in the same run.",
        "",
        "## Results",
        "",
        "| system | what | messages | median msg/s | min - max | spread | CPU µs/msg | commits/s | vs raw "
        "| % of bound |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in systems:
        e = summary.get(s.name, {})
        what = s.note + ("" if s.guarantee == "at-least-once" else f". **{s.guarantee}**")
        if not e.get("runs"):
            why = "; ".join(sorted(set(e.get("failed", []))))[:300]
            lines.append(f"| `{s.name}` | {what} | {s.messages:,} | failed: {why} | | | | | | |")
            continue
        bound = "-"
        if e.get("pct_of_bound") is not None:
            bound = f"{e['pct_of_bound']:.0f}% of {e['bound']:,.0f}"
        lines.append(
            f"| `{s.name}` | {what} | {s.messages:,} | {e['median_rate']:,.0f} | "
            f"{e['min_rate']:,.0f} - {e['max_rate']:,.0f} | {e['spread_pct']:.0f}% | {e['cpu_us_per_msg']:.1f} | "
            f"{_num(e['commits_per_s'], '.1f')} | {_num(e.get('vs_raw'), '.3f')} | {bound} |")
    failed = {k: v["failed"] for k, v in summary.items() if v.get("failed")}
    if failed:
        lines += ["", "Failed runs: " + "; ".join(f"`{k}`: {', '.join(v)}" for k, v in failed.items())]
    raw1k, raw100 = summary.get("raw-1k", {}).get("median_rate"), summary.get("raw", {}).get("median_rate")
    ratios_1k = [f"`{n}` {summary[n]['median_rate'] / raw1k:.3f} of `raw-1k`" for n in
                 ("sg-noop-partition-1k", "sg-noop-key-1k") if raw1k and summary.get(n, {}).get("median_rate")]
    if ratios_1k:
        lines += ["", f"1 KB values: {', '.join(ratios_1k)} (the `vs raw` column compares with the 100-byte `raw`"
                  f"{f'; `raw-1k` is {raw1k / raw100:.2f}x `raw`' if raw100 else ''})."]
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | per-round | threshold | met |",
        "|---|---:|---|---:|---|",
    ]
    for t in targets:
        per = ", ".join(f"{x:.2f}" for x in t["per_round"]) or "-"
        lines.append(f"| {t['target']} | {t['shown']} | {per} | {t['threshold']} | "
                     f"{'met' if t['met'] else '**not met**'} |")
    lines += ["", "Ratios are of the medians; the per-round ratios pair the two systems' runs of the same round."]
    if rss is not None:
        sg, raw = rss.get("sg", {}), rss.get("raw", {})
        short = "" if rss["backlog"] >= rss["requested"] else (
            f" (**{rss['requested']:,} requested**: producing was cut at the {RSS_PREFILL_BUDGET:.0f} s budget)")
        lines += [
            "",
            "### Memory with a large backlog, and commits",
            "",
            f"A topic of {PARTITIONS} partitions is prefilled with {rss['backlog']:,} records of {VALUE_BYTES} bytes"
            f"{short} in {rss['prefill_seconds']:.0f} s by a fast producer (acks=1, linger.ms=50, large batches). "
            f"Each consumer then runs in its own process (`python -m benchmarks.rss_child`) for {RSS_SECONDS:.0f} s "
            f"from its first message with a {RSS_HANDLER_SLEEP * 1000:g} ms handler, and the parent reads the "
            "child's `VmHWM` (peak resident set) from `/proc/<pid>/status` before it exits.",
            "",
            "| process | handler | processed in the window | msg/s | peak RSS (VmHWM) | commits/s | "
            "partitions paused at once (max) |",
            "|---|---|---:|---:|---:|---:|---:|",
            f"| streamguard worker, default `Settings()`, default handler options | async "
            f"`asyncio.sleep({RSS_HANDLER_SLEEP:g})`, 64/partition | {_num(sg.get('processed'))} | "
            f"{_num(sg.get('rate'))} | {_num(sg.get('vmhwm_mb'), '.0f')} MB | {_num(sg.get('commits_per_s'), '.2f')}"
            f" | {_num(sg.get('max_paused_partitions'))} |",
            f"| raw loop (reference), `queued.max.messages.kbytes=16384` | `time.sleep({RSS_HANDLER_SLEEP:g})` "
            f"serially | {_num(raw.get('processed'))} | {_num(raw.get('rate'))} | "
            f"{_num(raw.get('vmhwm_mb'), '.0f')} MB | {_num(raw.get('commits_per_s'), '.2f')} | - |",
            "",
            "The worker reads the backlog far slower than it is available, so the limit comes from flow control "
            "(partitions paused while their buffers are full), not from the backlog running out"
            + (f": {sg.get('processed', 0):,} of {rss['backlog']:,} records were processed in the window."
               if sg.get("processed") else "."),
        ]
        for name, e in (("streamguard", sg), ("raw", raw)):
            if e.get("error"):
                lines.append(f"\n{name} child error: `{e['error']}`")
    if profiles:
        lines += ["", "## Where the time goes (targets not met)", "",
                  "One extra run of the system under cProfile after the timed rounds (`python -m benchmarks.run "
                  "--profile NAME` prints them by cumulative time), by own time (tottime) per thread, blocking "
                  "waits left out and the share of each function in the thread's busy time: the poll thread "
                  "(librdkafka calls, flow control), the event-loop thread (dispatch, scheduling, bookkeeping) and "
                  "the handler threads (sync handlers). The profiler slows the run several-fold, so read it for "
                  "proportions, not for absolute time."]
        for name, text in profiles.items():
            lines += ["", f"### `{name}`", "", "```text", text, "```"]
    if zipf_stats:
        z = zipf_stats
        lines += [
            "",
            "### About the Zipf case",
            "",
            f"In the Zipf topic the hottest key carries {z['hottest_key_share'] * 100:.1f}% of the records "
            f"({z['hottest_key_messages']:,} of {config['zipf_messages']:,}) and the largest partition "
            f"{z['largest_partition_share'] * 100:.1f}%. With per-key ordering those records run one after another, "
            f"so even a perfect scheduler with {math.ceil(100 / PARTITIONS)} concurrent keys per partition cannot "
            f"exceed **{z['bound']:,.0f} msg/s** on it ({z['bound'] / (100 / SLEEP) * 100:.0f}% of the uniform "
            "bound): the 0.7 target is out of reach for any key-ordered consumer on this key distribution; "
            "compare the measured Zipf rate with this bound instead "
            f"({_num(summary.get('sg-5ms-key-100-zipf', {}).get('pct_of_zipf_bound'), '.0f')}% of it).",
        ]
    lines.append("")
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run per system, a third of the messages, and a "
                   "smaller backlog for the memory run")
    p.add_argument("--runs", type=int, default=None, help="runs per system (default 5, --quick 1)")
    p.add_argument("--messages", type=int, default=None,
                   help=f"messages of the no-op systems (default {NOOP_MESSAGES:,}); the 5 ms systems scale with it")
    p.add_argument("--backlog", type=int, default=None, help=f"records of the memory run (default {RSS_BACKLOG:,})")
    p.add_argument("--no-memory", action="store_true", help="skip the memory/commit-rate run")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these systems (no report is written)")
    p.add_argument("--profile", metavar="NAME", help="run NAME (a streamguard system) once under cProfile and "
                   "print the top 15 lines per thread (no report is written)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    noop = args.messages if args.messages is not None else (NOOP_MESSAGES // 3 if args.quick else NOOP_MESSAGES)
    scale = noop / NOOP_MESSAGES
    systems = make_systems(noop, max(60, round(KEY_MESSAGES * scale)), max(30, round(SERIAL_MESSAGES * scale)),
                           max(20, round(RAW_SERIAL_MESSAGES * scale)),
                           max(50, round(FASTSTREAM_NOOP_MESSAGES * scale)),
                           max(50, round(FASTSTREAM_KEY_MESSAGES * scale)))
    names = {s.name for s in systems}
    wanted = args.only or ([args.profile] if args.profile else None)
    for name in wanted or []:
        if name not in names:
            print(f"unknown system {name!r}; systems: {', '.join(sorted(names))}", file=sys.stderr)
            return 2
    if args.profile and next(s for s in systems if s.name == args.profile).kind != "sg":
        print("--profile takes a streamguard system (sg-...)", file=sys.stderr)
        return 2
    if wanted:
        systems = [s for s in systems if s.name in wanted]
    if args.profile:
        runs = 1
    report = not (args.only or args.profile)

    t_start = time.monotonic()
    external = os.environ.get("STREAMGUARD_BOOTSTRAP")
    cluster = None
    if external:
        bootstrap = external
    else:
        from streamguard.testing import LocalKafkaCluster

        print("starting a local 1-node Kafka ...", file=sys.stderr)
        cluster = LocalKafkaCluster(1).start()
        bootstrap = cluster.bootstrap
    try:
        with tempfile.TemporaryDirectory(prefix="streamguard-bench-") as tmp:
            return _main(args, systems, runs, bootstrap, Path(tmp), report, t_start, bool(external))
    finally:
        if cluster is not None:
            cluster.stop()


TOPIC_VALUE_BYTES = {"uniform": VALUE_BYTES, "zipf": VALUE_BYTES, "uniform-1k": 1024}


def _main(args: argparse.Namespace, systems: list[System], runs: int, bootstrap: str, workdir: Path,
          report: bool, t_start: float, external: bool) -> int:
    from streamguard.testing.pytest_plugin import create_topic

    rng = random.Random(SEED)
    tag = uuid.uuid4().hex[:8]
    topics: dict[str, str] = {}
    sizes = {kind: max((s.messages for s in systems if s.topic == kind), default=0) for kind in TOPIC_VALUE_BYTES}
    zipf_stats: dict[str, Any] = {}
    for kind, n in sizes.items():
        if not n:
            continue
        name = create_topic(bootstrap, f"bench-{kind}-{tag}", PARTITIONS)
        indices = zipf_indices(n, rng) if kind == "zipf" else [rng.randrange(KEYS) for _ in range(n)]
        t = time.monotonic()
        counts = prefill(bootstrap, name, indices, TOPIC_VALUE_BYTES[kind])
        total = log_end_total(bootstrap, name)
        if total != n:
            raise RuntimeError(f"{name}: log end offsets sum to {total}, expected {n}")
        print(f"prefilled {name}: {n:,} records in {time.monotonic() - t:.1f}s (log end offsets verified)",
              file=sys.stderr)
        topics[kind] = name
        if kind == "zipf":
            bound, zipf_stats = keyed_bound(counts, math.ceil(100 / PARTITIONS))
            zipf_stats["bound"] = bound

    profile: dict[str, Any] | None = \
        {"poll thread": cProfile.Profile(), "loop thread": cProfile.Profile()} if args.profile else None
    results: list[Result] = []
    for rnd in range(1, runs + 1):
        for s in systems:
            topic = topics[s.topic]
            if profile is not None:
                r = run_one(s, bootstrap, topic, rnd, workdir, profile)
            else:
                r = run_isolated(s, bootstrap, topic, rnd, workdir)
            results.append(r)
            status = r.error or ""
            print(f"[round {rnd}/{runs}] {s.name:<24} {r.rate:>10,.0f} msg/s  {r.messages:>6,} msgs in "
                  f"{r.seconds:6.2f}s  {r.cpu_us_per_msg:7.1f} µs/msg CPU  {_num(r.commits_per_s, '4.1f')} "
                  f"commits/s  (wall {r.wall_seconds:.1f}s) {status}", file=sys.stderr)

    if profile is not None:
        print(profile_text(profile, top=30, sort="tottime"))
        return 0

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = summarize(systems, results, zipf_stats.get("bound"))
    rss = None
    if report and not args.no_memory:
        backlog = args.backlog or (RSS_BACKLOG // 5 if args.quick else RSS_BACKLOG)
        rss = run_rss(bootstrap, rng, backlog)
    targets = evaluate_targets(systems, summary, results, rss) if report else []
    profiles: dict[str, str] = {}
    if report:  # explain every streamguard target that is not met with a profile of the system behind it
        by_name = {s.name: s for s in systems}
        for t in targets:
            name = PROFILE_FOR.get(t["system"] or "")
            if t["met"] or not name or name in profiles or name not in by_name:
                continue
            print(f"profiling {name} ...", file=sys.stderr)
            s = by_name[name]
            _r, profiles[name] = profile_system(s, bootstrap, topics[s.topic], workdir)
    total_s = time.monotonic() - t_start
    print(_table(systems, summary, targets), file=sys.stderr)
    if not report:
        return 0
    command = "python -m benchmarks.run" + ("".join(f" {a}" for a in sys.argv[1:]) if sys.argv[1:] else "")
    info = machine_info(external)
    config = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "runs": runs,
              "command": command, **{f"{k}_messages": v for k, v in sizes.items()},
              "partitions": PARTITIONS, "value_bytes": VALUE_BYTES, "keys": KEYS, "zipf_s": ZIPF_S,
              "handler_sleep_s": SLEEP, "seed": SEED, "settings": "streamguard Settings() defaults"}
    write_doc(DOC, command, info, config, systems, summary, targets, peak_rss_mb, total_s, zipf_stats, rss, profiles)
    RESULTS.write_text(json.dumps({
        "config": config, "machine": info, "systems": [asdict(s) for s in systems],
        "results": [asdict(r) for r in results], "summary": summary, "targets": targets,
        "zipf": zipf_stats, "memory": rss, "profiles": profiles, "peak_rss_mb": peak_rss_mb,
        "total_seconds": total_s,
    }, indent=2) + "\n")
    print(f"wrote {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)} ({total_s:.0f}s in all)", file=sys.stderr)
    return 0


def _table(systems: list[System], summary: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    rows = [f"{'system':<24} {'median msg/s':>13} {'min':>10} {'max':>10} {'µs/msg':>8} {'vs raw':>7} {'% bound':>8}"]
    for s in systems:
        e = summary.get(s.name, {})
        if not e.get("runs"):
            rows.append(f"{s.name:<24} {'failed':>13}")
            continue
        rows.append(f"{s.name:<24} {e['median_rate']:>13,.0f} {e['min_rate']:>10,.0f} {e['max_rate']:>10,.0f} "
                    f"{e['cpu_us_per_msg']:>8.1f} {_num(e.get('vs_raw'), '.3f'):>7} "
                    f"{_num(e.get('pct_of_bound'), '.0f'):>8}")
    for t in targets:
        rows.append(f"target {t['target']}: {t['shown']} ({t['threshold']}) {'met' if t['met'] else 'NOT MET'}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
