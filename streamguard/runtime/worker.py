"""The worker: one poll thread that owns the consumer, one event loop that runs the handlers.

Threads and who owns what:

- the **poll thread** (the caller of :meth:`Worker.run`) owns the ``confluent_kafka.Consumer``: it
  fetches batches, applies pause/resume requests, commits about once per ``commit_interval`` and
  serves rebalance callbacks. It never runs a handler, so a hung handler cannot get the worker evicted
  by ``max.poll.interval.ms``.
- the **loop thread** runs an asyncio event loop that owns every :class:`PartitionState` (offsets and
  bulkheads). Async handlers run on it; sync handlers run on a bounded thread pool.

The poll thread talks to the loop thread only by scheduling calls on it (``call_soon_threadsafe``) and
waiting for their results, so partition state has a single owner and needs no locks.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from streamguard.chaos.crashpoints import armed, maybe_crash
from streamguard.context import Context
from streamguard.core.envelope import FailureInfo, dead_letter_headers, describe_error, parse_envelope, retry_headers
from streamguard.core.idempotency import ClaimOutcome, ClaimStatus
from streamguard.core.offsets import decode_metadata
from streamguard.core.retry import GiveUp, Retry
from streamguard.errors import (
    CircuitOpen,
    ConfigError,
    CrashLoopDetected,
    DecodeError,
    HandlerSignal,
    HandlerTimeout,
    KafkaOperationError,
    LeaseLost,
    MessageTooLarge,
    PermanentFailure,
    Quarantine,
)
from streamguard.kafka.clients import ensure_topics, make_admin, make_consumer, partition_counts
from streamguard.kafka.producer import ReliableProducer
from streamguard.observability.metrics import observe_many
from streamguard.runtime.claimed_lane import run_claimed_lane, settle_chunk
from streamguard.runtime.gaps import GapDetector
from streamguard.runtime.partition import Flow, LaneJob, PartitionState
from streamguard.runtime.solo_gate import SoloGate
from streamguard.runtime.store_batcher import StoreBatcher

if TYPE_CHECKING:
    from streamguard.app import App, HandlerSpec

log = logging.getLogger("streamguard.worker")
_CRASH = armed()
T = TypeVar("T")

DEFAULT_RETRY = Retry(attempts=3, backoff=(0.2, 5.0))
# bytes a buffered message costs beyond its key and value: tracemalloc measured ~280 B for a held
# confluent_kafka Message with 100-byte values (object, key/value bytes objects, deque slot); rounded up
# for the scheduler's bookkeeping
MESSAGE_OVERHEAD = 400


class Worker:
    """Runs an :class:`~streamguard.app.App` until stopped. Build it with ``app.worker()``."""

    def __init__(self, app: App, *, install_signals: bool = True, worker_id: str | None = None,
                 metrics: Any = None) -> None:
        self.app = app
        self.settings = app.settings
        self.worker_id = worker_id or app.worker_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.install_signals = install_signals
        self.stats: collections.Counter[str] = collections.Counter()
        from streamguard.observability.metrics import Metrics

        self.metrics: Metrics = metrics or Metrics()
        self._gaps = GapDetector() if app.settings.detect_gaps else None
        self._specs: dict[str, HandlerSpec] = dict(app.handlers)
        for spec in app.handlers.values():  # each retry topic is consumed by a derived, partition-serial spec
            for level in range(1, len(spec.retry_topics) + 1):
                name = spec.retry_topic(level)
                self._specs[name] = dataclasses.replace(
                    spec, topic=name, retry_of=spec.topic, retry_level=level, ordering="partition",
                    concurrency=1, max_buffered=max(spec.max_buffered // 4, 16))
        for spec in app.handlers.values():
            for breaker in spec.breakers:
                breaker.add_listener(self.metrics.breaker_changed)
        self._states: dict[tuple[str, int], PartitionState] = {}
        self._flows: dict[tuple[str, int], Flow] = {}
        self._inbox: collections.deque[list[tuple[tuple[str, int], list[Any]]]] = collections.deque()
        self._inbox_armed = False  # a _drain_inbox is scheduled on the loop
        self._message_bytes = 0.0  # running estimate of one buffered message's memory (0: nothing seen yet)
        self._outcome_children: dict[tuple[str, str], Any] = {}
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._timed_out: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        timeouts = [s.timeout for s in app.handlers.values() if s.timeout is not None]
        self._watch_every = min([0.1, *(t / 10 for t in timeouts)])
        self._duration_children: dict[str, Any] = {}
        self._pending_counts: dict[tuple[str, str], int] = {}  # loop thread: exported by _flush_metrics
        self._pending_durations: dict[str, list[float]] = {}
        self._metrics_armed = False
        self._stop = threading.Event()
        self._hard_stop = threading.Event()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="streamguard-loop", daemon=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.settings.sync_threads, "streamguard-handler")
        self._store_pool = concurrent.futures.ThreadPoolExecutor(4, "streamguard-store")
        self._keys_in_flight: dict[str, asyncio.Event] = {}
        self._held: dict[str, int] = {}  # idempotency keys claimed by running handlers (renewed)
        self._renewer: asyncio.Task[None] | None = None
        self._gate: SoloGate | None = None
        self._acked: dict[tuple[str, int], tuple[int, str]] = {}
        self._last_poll = time.monotonic()
        self._consumer: Any = None
        self._producer: ReliableProducer | None = None
        self._store: StoreBatcher | None = None
        self._assigned_at: float | None = None
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None

    # ------------------------------------------------------------------ public
    @property
    def assignment(self) -> list[tuple[str, int]]:
        return sorted(self._states)

    def healthy(self) -> tuple[bool, str]:
        """The poll loop is alive if it polled in the last 30 s."""
        age = time.monotonic() - self._last_poll
        return (age < 30.0, f"last poll {age:.1f}s ago")

    def ready(self) -> tuple[bool, str]:
        """Ready when partitions are assigned and none is stuck: a partition with work in flight that has not
        resolved anything for ``stuck_after`` seconds."""
        if not self._ready.is_set():
            return False, "starting"
        if not self._states:
            return False, "no partitions assigned"
        now = time.monotonic()
        limit = self.settings.stuck_after
        stuck = [f"{st.topic}[{st.partition}]" for st in list(self._states.values())
                 if st.scheduler.running and st.progress_at and now - st.progress_at > limit]
        if stuck:
            return False, f"no progress for over {limit:.0f}s on {', '.join(sorted(stuck))}"
        return True, f"{len(self._states)} partition(s) assigned"

    def stop(self, hard: bool = False) -> None:
        """Ask the worker to drain and leave (``hard``: leave now, committing only what is resolved)."""
        if self._stop.is_set() or hard:
            self._hard_stop.set()
        self._stop.set()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        return self._ready.wait(timeout)

    # ------------------------------------------------------------------ startup
    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        return {
            "bootstrap.servers": self.app.brokers,
            "group.id": self.app.group_id,
            "client.id": f"streamguard-{self.worker_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": s.auto_offset_reset,
            "partition.assignment.strategy": "cooperative-sticky",
            "max.poll.interval.ms": 300000,
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            "queued.max.messages.kbytes": 16384,
            # when that 16 MB prefetch queue is full librdkafka postpones the next fetch by this much (default
            # 1000 ms): with the default a fast handler drains the queue and then waits, capping a no-op worker
            # at ~130k msg/s on this machine; 20 ms keeps the fetcher just ahead (~1M msg/s raw, same memory)
            "fetch.queue.backoff.ms": 20,
            "fetch.wait.max.ms": 100,
            "socket.timeout.ms": 15000,  # a black-holed connection is given up in 15 s, not librdkafka's 60 s
            "log_level": 3,
            "error_cb": self._on_client_error,
            "on_commit": self._on_commit,
            **s.kafka,
        }

    def _on_client_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            log.error("authentication failed: %s; stopping", err.str())
            self.stats["auth_failed"] += 1
            self.stop(hard=True)
        elif err.fatal():
            log.error("fatal client error: %s; stopping", err.str())
            self.stats["fatal_errors"] += 1
            self.stop(hard=True)
        else:
            log.warning("kafka client: %s", err.str())

    def _prepare(self) -> None:
        """Validate config and topics, create failure topics, build clients. Raises before consuming."""
        from streamguard.errors import AuthenticationFailed

        if not self.app.handlers:
            raise ConfigError(f"app {self.app.name!r} has no handlers")
        cfg = self._consumer_config()
        base = {k: v for k, v in cfg.items() if k.startswith(("bootstrap.", "security.", "sasl.", "ssl."))}
        admin = make_admin({**base, "error_cb": self._on_client_error})
        counts = partition_counts(admin, self.app.handlers, self.settings.startup_timeout, self.app.brokers,
                                  abort=lambda: self.stats["auth_failed"] > 0)
        if self.stats["auth_failed"]:
            raise AuthenticationFailed(f"the cluster at {self.app.brokers} rejected the credentials")
        if self.settings.create_failure_topics:
            wanted: dict[str, int] = {}
            for topic, spec in self.app.handlers.items():
                wanted[spec.dlq] = counts[topic]
                wanted[spec.quarantine] = counts[topic]
                for level in range(1, len(spec.retry_topics) + 1):
                    wanted[spec.retry_topic(level)] = counts[topic]
            created = ensure_topics(admin, wanted, replication=self.settings.failure_topic_replication)
            if created:
                log.info("created failure topics: %s", ", ".join(created))
        self._consumer = make_consumer(cfg)
        self._producer = ReliableProducer({**base, "client.id": f"streamguard-{self.worker_id}-failures"})
        store = self.app.idempotency
        if store is not None:
            store.open()
            self._store = StoreBatcher(store, self._store_pool, self.worker_id, self.settings.lease_seconds)
        self._loop_thread.start()
        self._gate = self._call(self._make_gate)

    @staticmethod
    def _make_gate() -> SoloGate:
        return SoloGate()

    # ------------------------------------------------------------------ cross-thread calls
    def _call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 60.0) -> T:
        """Run ``fn(*args)`` on the loop thread and wait for its result (poll thread only)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    # ------------------------------------------------------------------ the poll loop
    def run(self) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT when run on the main thread)."""
        self._prepare()
        restore = self._install_signal_handlers()
        consumer = self._consumer
        topics = list(self._specs)
        consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("worker %s consuming %s as group %s", self.worker_id, topics, self.app.group_id)
        s = self.settings
        next_commit = time.monotonic() + s.commit_interval
        next_sweep = time.monotonic() + 60.0
        try:
            while not self._stop.is_set():
                self._poll_once(consumer, s.poll_batch, s.poll_timeout)
                if time.monotonic() >= next_commit:
                    self._commit(asynchronous=True)
                    self._update_gauges()
                    next_commit = time.monotonic() + s.commit_interval
                    if self.app.idempotency is not None and time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + 3600.0
                        self._store_pool.submit(self._sweep, self.app.idempotency, s.idempotency_retention)
            self._shutdown(consumer)
        finally:
            restore()
            self._teardown()

    @staticmethod
    def _sweep(store: Any, retention: float) -> None:
        """Delete completed idempotency keys older than ``retention`` (keeps the store from growing forever)."""
        try:
            removed = store.cleanup(retention)
            if removed:
                log.info("idempotency store: removed %d completed key(s) older than %.0fs", removed, retention)
        except Exception as exc:
            log.warning("idempotency store cleanup failed: %s", exc)

    def _poll_once(self, consumer: Any, batch: int, timeout: float) -> None:
        if self._flow_control(consumer):
            timeout = min(timeout, 0.005)  # something is held back: come back soon to hand it over
        msgs = consumer.consume(batch, timeout)
        self._last_poll = time.monotonic()
        if msgs:  # payload bytes of this batch feed the worker-wide memory estimate behind max_inflight_bytes
            sample = msgs[:32]
            size = sum([len(m.value() or b"") + len(m.key() or b"") for m in sample]) / len(sample) + MESSAGE_OVERHEAD
            self._message_bytes = size if not self._message_bytes else self._message_bytes * 0.8 + size * 0.2
        flows = self._flows
        for m in msgs:
            err = m.error()
            if err is None:
                flow = flows.get((m.topic(), m.partition()))
                if flow is not None:
                    flow.holding.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                self._on_client_error(err)
        self._flow_control(consumer)

    def _flow_control(self, consumer: Any) -> bool:
        """(poll thread) Hand over what each partition's budget allows; pause a partition whose held-back
        messages fill a second budget (or when the worker-wide cap is reached); resume it when drained.

        Memory per partition stays within two budgets plus one fetched batch, whatever the handlers do; the
        worker-wide cap is ``max_inflight_total`` messages or ``max_inflight_bytes`` (estimated from the sizes
        seen), whichever is lower.
        Returns True while anything is held back or paused.
        """
        flows = self._flows
        if not flows or self._stop.is_set():
            return False  # while shutting down nothing more is handed over
        s = self.settings
        cap = s.max_inflight_total
        if self._message_bytes:
            cap = min(cap, max(1, int(s.max_inflight_bytes / self._message_bytes)))
        total = 0
        out: list[tuple[tuple[str, int], list[Any]]] = []  # per partition, in offset order
        busy = False
        pause, resume = [], []
        for (topic, partition), f in flows.items():
            holding = f.holding
            if holding:
                credit = f.limit - (f.handed - f.released)
                if credit >= len(holding):
                    out.append(((topic, partition), list(holding)))
                    f.handed += len(holding)
                    holding.clear()
                elif credit > 0:
                    out.append(((topic, partition), [holding.popleft() for _ in range(credit)]))
                    f.handed += credit
            buffered = f.handed - f.released + len(holding)
            total += buffered
            if f.needs_resume:
                f.needs_resume = False
                resume.append(TopicPartition(topic, partition))
            if not f.paused:
                if len(holding) >= f.limit or (total >= cap and buffered > 0):
                    f.paused = True
                    pause.append(TopicPartition(topic, partition))
            elif not holding and buffered <= f.limit // 2 and total < cap * 0.8:
                f.paused = False
                resume.append(TopicPartition(topic, partition))
            busy = busy or f.paused or bool(holding)
        if out:
            self._inbox.append(out)
            if not self._inbox_armed:  # one wake-up of the loop for whatever piles up before it runs
                self._inbox_armed = True
                self._loop.call_soon_threadsafe(self._drain_inbox)
        try:
            if pause:
                consumer.pause(pause)
                self.stats["partition_pauses"] += len(pause)  # poll thread; a diagnostic count
            if resume:
                consumer.resume(resume)
        except KafkaException as exc:
            log.warning("pause/resume failed: %s", exc)
        if pause or resume:
            self.metrics.paused_partitions.set(sum(1 for f in flows.values() if f.paused))
        return busy

    # ------------------------------------------------------------------ commits
    def _commit_snapshot(self, only: set[tuple[str, int]] | None = None) -> list[TopicPartition]:
        """(loop thread) The commit offsets that changed since the last acknowledged commit."""
        out = []
        for k, st in self._states.items():
            if only is not None and k not in only:
                continue
            c = st.tracker.committable()
            if c is None:
                continue
            md = st.tracker.metadata(self.settings.metadata_max_bytes)
            if self._acked.get(k) == (c, md):
                continue
            out.append(TopicPartition(st.topic, st.partition, c, metadata=md))
        return out

    def _commit(self, asynchronous: bool, only: set[tuple[str, int]] | None = None,
                snapshot: list[TopicPartition] | None = None) -> None:
        offsets = snapshot if snapshot is not None else self._call(self._commit_snapshot, only)
        if not offsets:
            return
        if _CRASH:
            maybe_crash("before_commit")
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                # optimistic: a failure reported to _on_commit forgets it, so the next cycle commits again
                for tp in offsets:
                    self._acked[(tp.topic, tp.partition)] = (tp.offset, tp.metadata or "")
            else:
                result = self._consumer.commit(offsets=offsets, asynchronous=False) or []
                for tp in result:
                    if tp.error is None:
                        self._acked[(tp.topic, tp.partition)] = (tp.offset, tp.metadata or "")
            self.stats["commits_ok"] += 1
            self.metrics.commits.labels(result="ok").inc()
        except KafkaException as exc:
            for tp in offsets:
                self._acked.pop((tp.topic, tp.partition), None)
            err = exc.args[0] if exc.args else exc
            if isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET:
                return
            self.stats["commits_failed"] += 1
            self.metrics.commits.labels(result="failed").inc()
            log.warning("commit failed (will retry): %s", err)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            for tp in partitions:
                self._acked.pop((tp.topic, tp.partition), None)

    # ------------------------------------------------------------------ rebalances (poll thread)
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        try:
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            log.warning("could not read committed offsets (%s); starting without skip lists", exc)
            committed = [TopicPartition(tp.topic, tp.partition, OFFSET_INVALID) for tp in partitions]
        infos = []
        for tp in committed:
            off = tp.offset if tp.offset >= 0 else None
            skip = decode_metadata(tp.metadata, off) if off is not None else set()
            flow = Flow(self._specs[tp.topic].max_buffered)
            self._flows[(tp.topic, tp.partition)] = flow
            infos.append((tp.topic, tp.partition, off, skip, flow))
        self._call(self._install, infos)
        self._ready.set()
        self.stats["assigned"] += len(partitions)
        self.metrics.rebalances.labels(kind="assigned").inc()
        self._emit("assigned", {"partitions": [(tp.topic, tp.partition) for tp in partitions]})
        log.info("assigned %s", [f"{t}[{p}]@{o}" for t, p, o, _, _ in infos])

    def _install(self, infos: list[tuple[str, int, int | None, set[int], Flow]]) -> None:
        for topic, partition, committed, skip, flow in infos:
            old = self._states.pop((topic, partition), None)
            if old is not None:
                self._fence(old)
            st = PartitionState(self._specs[topic], partition, committed, skip, flow)
            if self._gaps is not None:
                self._gaps.reset(topic, partition)
            spec = st.spec
            plain = not spec.breakers and spec.fallback is None and spec.retry_of is None
            simple = plain and self._store is None
            # with a store the lane claims and completes a chunk at a time (claimed_lane.py)
            st.lane = plain and not spec.is_async and spec.ordering == "partition"
            st.fast = simple and spec.is_async and spec.max_message_bytes is None
            self._states[(topic, partition)] = st
            if committed is not None:
                self._acked[(topic, partition)] = (committed, "")

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._emit("revoking", {"partitions": sorted(keys)})
        events = self._call(self._begin_revoke, keys)
        deadline = time.monotonic() + self.settings.revoke_timeout
        if not self._hard_stop.is_set():
            for ev in events:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    asyncio.run_coroutine_threadsafe(ev.wait(), self._loop).result(remaining)
                except (concurrent.futures.TimeoutError, TimeoutError):
                    break
        offsets = self._call(self._finish_revoke, keys)
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed: %s", exc)
        for k in keys:
            self._acked.pop(k, None)
            self._flows.pop(k, None)
        self.stats["revoked"] += len(keys)
        self.metrics.rebalances.labels(kind="revoked").inc()
        for topic, partition in keys:
            self.metrics.forget_partition(topic, partition)
        log.info("revoked %s (committed %s)", sorted(keys), [(tp.partition, tp.offset) for tp in offsets])

    def _begin_revoke(self, keys: set[tuple[str, int]]) -> list[asyncio.Event]:
        events = []
        for k in keys:
            st = self._states.get(k)
            if st is None:
                continue
            st.draining = True
            if st.lane_job is not None:
                st.lane_job.stop = True  # the lane drains the partition when its batch ends
            else:
                st.flow.released += len(st.scheduler.drain())
            if not st.idle:
                st.drained = asyncio.Event()
                events.append(st.drained)
        return events

    def _finish_revoke(self, keys: set[tuple[str, int]]) -> list[TopicPartition]:
        snapshot = self._commit_snapshot(keys)
        for k in keys:
            st = self._states.pop(k, None)
            if st is not None:
                self._fence(st)
        return snapshot

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._call(self._drop_lost, keys)
        for k in keys:
            self._acked.pop(k, None)
            self._flows.pop(k, None)
        self.stats["lost"] += len(keys)
        self.metrics.rebalances.labels(kind="lost").inc()
        self._emit("lost", {"partitions": sorted(keys)})
        log.warning("partitions lost (not committed): %s", sorted(keys))

    def _drop_lost(self, keys: set[tuple[str, int]]) -> None:
        for k in keys:
            st = self._states.pop(k, None)
            if st is not None:
                st.flow.released += len(st.scheduler.drain())
                self._fence(st)

    def _fence(self, st: PartitionState) -> None:
        """(loop thread) Late results of ``st`` are ignored from now on."""
        st.revoked = True
        if st.lane_job is not None:
            st.lane_job.stop = True
        if st.drained is not None:
            st.drained.set()

    # ------------------------------------------------------------------ dispatch (loop thread)
    def _drain_inbox(self) -> None:
        """Dispatch every hand-over of the poll thread, in order. Disarmed *before* draining: a hand-over
        appended meanwhile is either drained here or arms a new wake-up, never left behind."""
        self._inbox_armed = False
        inbox = self._inbox
        while inbox:
            self._dispatch(inbox.popleft())

    def _dispatch(self, groups: list[tuple[tuple[str, int], list[Any]]]) -> None:
        """Track and schedule what the poll thread handed over: runs of one partition each, in offset order."""
        states = self._states
        for k, msgs in groups:
            st = states.get(k)
            if st is None:
                continue  # not ours any more: the next owner starts from the committed offset
            if st.draining:
                st.flow.released += len(msgs)
                continue
            if st.lane and self._gaps is None:  # one key, in order: track and queue the run as a whole
                skipped = st.tracker.track_many([m.offset() for m in msgs])
                if skipped:
                    drop = set(skipped)
                    msgs = [m for i, m in enumerate(msgs) if i not in drop]
                    st.flow.released += len(skipped)
                    self.stats["preresolved_skipped"] += len(skipped)
                st.scheduler.submit_many(None, msgs)
                job = st.lane_job
                if job is not None and job.more is not None and msgs:
                    with job.lock:
                        if job.more is not None:  # the running lane has not closed: it takes these next
                            job.more.append(msgs)
            else:
                self._dispatch_each(st, msgs)
            self._start_ready(st)

    def _dispatch_each(self, st: PartitionState, msgs: list[Any]) -> None:
        gaps = self._gaps
        for m in msgs:
            offset = m.offset()
            if gaps is not None:
                gap = gaps.observe(st.topic, st.partition, m.headers())
                if gap is not None:
                    self._report_gap(st, offset, *gap)
            try:
                skip = st.tracker.track(offset)
            except ValueError:
                skip = True  # a re-fetch of an offset already tracked (after a resume); already handled
            if skip:
                st.flow.released += 1
                self.stats["preresolved_skipped"] += 1
                continue
            ordering = st.spec.ordering
            if ordering == "key":
                key: Any = m.key()
            elif ordering == "partition":
                key = None
            else:
                key = ordering(m)
            st.scheduler.submit(key, m)

    def _report_gap(self, st: PartitionState, offset: int, producer: str, missing: int) -> None:
        self.stats["sequence_gaps"] += missing
        self.metrics.sequence_gaps.labels(topic=st.topic, partition=str(st.partition)).inc(missing)
        log.error("sequence gap: %d record(s) from producer %s never reached %s[%d] (seen at offset %d)",
                  missing, producer, st.topic, st.partition, offset,
                  extra={"topic": st.topic, "partition": st.partition, "offset": offset})

    def _start_ready(self, st: PartitionState) -> None:
        if not st.scheduler.running:
            st.progress_at = time.monotonic()
        if st.lane:
            self._start_lane(st)
            return
        create = self._loop.create_task
        run = self._process_fast if st.fast else self._process
        for key, m in st.scheduler.take():
            create(run(st, key, m))

    # ------------------------------------------------------------------ the serial lane (loop thread)
    LANE_BATCH = 2000

    def _start_lane(self, st: PartitionState) -> None:
        """Partition-serial sync handlers: run the next messages in order in ONE pool job, not a task each.

        The first failure (or an undecodable / oversized record) ends the batch and goes down the full
        per-message path (retries, DLQ, quarantine) with the failure counted as its first attempt.
        """
        if st.lane_job is not None or st.draining:
            return
        started = st.scheduler.take()
        if not started:
            return
        key = started[0][0]
        batch = st.scheduler.run_of(key, self.LANE_BATCH)
        job = st.lane_job = LaneJob()
        if self._store is None and len(batch) == st.scheduler.buffered:
            job.extend_max = min(self.LANE_EXTEND_MAX, st.flow.limit // 2)  # released only when the job ends
            job.more = []  # the batch is the whole queue: what arrives next may extend it (_lane_extend)
        fut = self._loop.run_in_executor(self._pool, self._run_lane, st, batch, job)
        fut.add_done_callback(lambda f: self._lane_done(st, key, batch, job, f))
        if st.spec.timeout is not None:
            self._loop.call_later(min(st.spec.timeout, 1.0) / 2, self._watch_lane, st, key, batch, job)

    def _run_lane(self, st: PartitionState, batch: list[Any], job: LaneJob) -> tuple[int, Any, BaseException | None]:
        """(pool thread) Handle ``batch`` in order; stop at the first message that needs the full path."""
        durations: list[float] = []  # observed as one batch when the lane ends (observe_many)
        try:
            if self._store is not None:
                return run_claimed_lane(st, batch, job, self._store, self.worker_id, self._idempotency_key,
                                        durations.append)
            return self._run_plain_lane(st, batch, job, durations.append)
        finally:
            observe_many(self.metrics.handler_duration.labels(topic=st.topic), durations)

    def _run_plain_lane(self, st: PartitionState, batch: list[Any], job: LaneJob,
                        observe: Callable[[float], None]) -> tuple[int, Any, BaseException | None]:
        spec = st.spec
        fn, decoder, takes_ctx, limit = spec.fn, spec.decoder, spec.takes_ctx, spec.max_message_bytes
        topic, partition, worker_id = st.topic, st.partition, self.worker_id
        clock = time.monotonic
        done = 0
        t0 = job.current_started = clock()  # one clock read per message: each end is the next start
        for m in batch:
            if job.stop or job.abandoned:
                break
            value = m.value()
            if limit is not None and (len(value or b"") + len(m.key() or b"")) > limit:
                return done, m, None
            try:
                model = decoder(value)
            except DecodeError:
                return done, m, None
            try:
                if takes_ctx:
                    offset = m.offset()
                    ctx = Context(topic, partition, offset, m.key(), m.headers(), m.timestamp()[1], 1,
                                  f"{topic}/{partition}/{offset}", worker_id, None)
                    ctx.idempotency_key = self._idempotency_key(spec, model, ctx)
                    fn(model, ctx)
                else:
                    fn(model)
            except BaseException as exc:
                observe(clock() - t0)
                return done, m, exc
            t1 = job.current_started = clock()
            observe(t1 - t0)
            t0 = t1
            done += 1
            job.done = done
            if done == len(batch) and job.more is not None:
                self._lane_extend(job, batch)  # the for loop goes on over what was appended
        return done, None, None

    LANE_EXTEND_MAX = 8 * LANE_BATCH  # a lane returns to the loop at least this often (commits, gauges)
    LANE_EXTEND_SECONDS = 0.1

    def _lane_extend(self, job: LaneJob, batch: list[Any]) -> None:
        """(pool thread) Append to ``batch`` what the loop dispatched for this partition while it ran, so a
        busy lane keeps its thread instead of going back to the loop for every batch (two thread hand-offs
        each); or close the job (``more = None``, under the lock the loop appends with) when nothing came,
        or the lane has run long enough: what arrives later waits in the scheduler for the next job."""
        with job.lock:
            more = job.more
            if (more and len(batch) < job.extend_max
                    and time.monotonic() - job.started < self.LANE_EXTEND_SECONDS):
                for msgs in more:
                    batch.extend(msgs)
                more.clear()
                job.extended += 1
            else:
                job.more = None

    def _watch_lane(self, st: PartitionState, key: Any, batch: list[Any], job: LaneJob) -> None:
        """A lane message running past the handler's timeout becomes a failure; the rest of the batch moves on."""
        if st.lane_job is not job or job.abandoned:
            return
        timeout = st.spec.timeout
        assert timeout is not None
        with job.lock:
            expired = bool(job.current_started) and time.monotonic() - job.current_started > timeout
            if expired:
                job.abandoned = True
                done, index, ok_keys, claimed = job.done, job.index, job.ok_keys, job.claimed
        if expired:
            exc = HandlerTimeout(f"handler {st.spec.name} ran past its timeout of {timeout}s "
                                 "(sync handlers cannot be interrupted; its thread runs on)")
            if self._store is None:
                self._lane_finish(st, key, batch, job, done, batch[done] if done < len(batch) else None, exc)
            else:  # the chunk's successes before it are completed first, its unfinished claims undone
                undo = [k for x, k in claimed if x >= index]
                self._loop.create_task(self._settle_abandoned(st, key, batch, job, index, ok_keys, undo, exc))
            return
        self._loop.call_later(min(timeout, 1.0) / 2, self._watch_lane, st, key, batch, job)

    async def _settle_abandoned(self, st: PartitionState, key: Any, batch: list[Any], job: LaneJob, index: int,
                                ok_keys: list[str], undo: list[str], exc: BaseException) -> None:
        store = self._store
        assert store is not None
        try:
            await store.call_with(settle_chunk, store, ok_keys, undo)
        except Exception:  # the store is down: nothing of the chunk is resolved; the full path retries it
            log.exception("could not settle the lane's chunk on %s[%d]", st.topic, st.partition)
            index = job.done
        self._lane_finish(st, key, batch, job, index, batch[index] if index < len(batch) else None, exc)

    def _lane_done(self, st: PartitionState, key: Any, batch: list[Any], job: LaneJob, fut: Any) -> None:
        if job.abandoned:
            return  # the watchdog already settled this batch
        try:
            done, failed, exc = fut.result()
        except BaseException as err:  # a bug in the lane itself: hand the head to the full path
            log.exception("lane failed on %s[%d]", st.topic, st.partition)
            done, failed, exc = job.done, batch[job.done] if job.done < len(batch) else None, err
            if self._store is not None:  # e.g. the store is down: not the handler's failure; claims left are
                exc = None               # suspects to the full path, which waits for the store
        self._lane_finish(st, key, batch, job, done, failed, exc)

    def _lane_finish(self, st: PartitionState, key: Any, batch: list[Any], job: LaneJob, done: int, failed: Any,
                     exc: BaseException | None) -> None:
        st.lane_job = None
        self.stats["lane_extended"] += job.extended
        if st.revoked:
            self.stats["fenced"] += done
            return
        tracker = st.tracker
        if done:
            st.progress_at = time.monotonic()
        if done and not tracker.mark_done_head(done, batch[0].offset(), batch[done - 1].offset()):
            tracker.mark_done_many([m.offset() for m in batch[:done]])
        st.scheduler.finish_many(key, done, keep_running=failed is not None)
        st.flow.released += done
        if job.dupes:
            self.stats["duplicate_skipped"] += job.dupes
            self._count("duplicate_skipped", st.topic, job.dupes)
            done -= job.dupes
            job.dupes = 0
        if done:
            self.stats["ok"] += done
            self._count("ok", st.topic, done)
        if failed is not None:
            if st.draining:  # do not start anything new while revoking; the head is simply not resolved
                st.scheduler.finish_many(key, 0)
                st.flow.released += len(st.scheduler.drain())
            else:
                self._loop.create_task(self._process(st, key, failed, exc))
                return
        if st.draining:
            st.flow.released += len(st.scheduler.drain())
            if st.drained is not None and st.scheduler.running == 0:
                st.drained.set()
        else:
            self._start_ready(st)

    def _resolve(self, st: PartitionState, key: Any, offset: int, *, take_one: bool = False) -> tuple[Any, Any] | None:
        """Mark ``offset`` resolved and start what became ready; with ``take_one`` the first of those is
        returned for the calling task to run itself (one task per slot, not one per message)."""
        if st.revoked:
            self.stats["fenced"] += 1
            return None
        st.tracker.mark_done(offset)
        st.scheduler.finish(key)
        st.flow.released += 1
        st.progress_at = time.monotonic()
        if not st.draining:
            if not take_one:
                self._start_ready(st)
                return None
            started = st.scheduler.take()
            if started:
                create = self._loop.create_task
                for k, m in started[1:]:
                    create(self._process_fast(st, k, m))
                return started[0]
        elif st.drained is not None and st.scheduler.running == 0:
            st.drained.set()
        return None

    # ------------------------------------------------------------------ one message (loop thread)
    async def _process_fast(self, st: PartitionState, key: Any, m: Any) -> None:
        """The common case in one coroutine: an async handler with no store, breaker or retry topic that
        succeeds. Anything else (undecodable bytes, a failure) continues down the full path in ``_process``,
        the failure counted as the first attempt.

        After a success the task goes on with the next ready message of its partition: creating a task per
        message was the largest fixed cost of the async path (the 5 ms handler at 100 keys reached 70-74% of
        its bound). A handler's context variables therefore carry over to the next message of its slot,
        as in any consumer loop; set them with a reset (``with``/``token``) if that matters."""
        spec = st.spec
        while True:
            try:
                model = spec.decoder(m.value())
            except DecodeError:
                await self._process(st, key, m)
                return
            ctx: Any = None
            if spec.takes_ctx:
                offset = m.offset()
                ctx = Context(st.topic, st.partition, offset, m.key(), m.headers(), m.timestamp()[1], 1,
                              f"{st.topic}/{st.partition}/{offset}", self.worker_id, None)
                ctx.idempotency_key = self._idempotency_key(spec, model, ctx)
            started = time.monotonic()
            try:
                await self._invoke(spec, spec.fn, model, ctx)
            except Exception as exc:
                self._observe_duration(st.topic, time.monotonic() - started)
                await self._process(st, key, m, exc)
                return
            self._observe_duration(st.topic, time.monotonic() - started)
            self.stats["ok"] += 1
            self._count("ok", st.topic)
            following = self._resolve(st, key, m.offset(), take_one=True)
            if following is None:
                return
            key, m = following

    async def _process(self, st: PartitionState, key: Any, m: Any, prior: BaseException | None = None) -> None:
        try:
            outcome = await self._handle(st, m, prior)
        except Exception:  # a bug in streamguard itself: never lose the message, never commit past it
            log.exception("internal error handling %s[%d]@%d; the partition will not commit past it",
                          st.topic, st.partition, m.offset())
            self.stats["internal_errors"] += 1
            return
        if outcome is None:
            self.stats["fenced"] += 1
            return
        self.stats[outcome] += 1
        self._count(outcome, st.topic)
        self._resolve(st, key, m.offset())

    def _idempotency_key(self, spec: HandlerSpec, model: Any, ctx: Context) -> str:
        if spec.key is not None:
            return str(spec.key(model, ctx))
        hdr = ctx.header("idempotency-key")
        if hdr is not None:
            return hdr.decode("utf-8", "replace")
        if ctx.origin is not None:  # a retry keeps the key of the original record
            return f"{ctx.origin[0]}/{ctx.origin[1]}/{ctx.origin[2]}"
        return f"{ctx.topic}/{ctx.partition}/{ctx.offset}"

    async def _handle(self, st: PartitionState, m: Any, prior: BaseException | None = None) -> str | None:
        spec = st.spec
        value = m.value()
        ctx = Context(st.topic, st.partition, m.offset(), m.key(), m.headers(), m.timestamp()[1], 0,
                      f"{st.topic}/{st.partition}/{m.offset()}", self.worker_id, self.app.idempotency)
        size = (len(value) if value else 0) + (len(m.key()) if m.key() else 0)
        if spec.max_message_bytes is not None and size > spec.max_message_bytes:
            err: BaseException = MessageTooLarge(f"record of {size} bytes exceeds max_message_bytes="
                                                 f"{spec.max_message_bytes}")
            return await self._divert(st, m, spec.quarantine, "quarantine", err, 0, None)
        try:
            model = spec.decoder(value)
        except DecodeError as exc:
            return await self._divert(st, m, spec.quarantine, "quarantine", exc, 0, None)
        if spec.retry_of is not None:
            env = parse_envelope(m.headers())
            ctx.origin = (env.source_topic or spec.retry_of, env.source_partition or 0,
                          env.source_offset if env.source_offset is not None else m.offset(),
                          env.source_timestamp_ms, env.retry_attempt or 0,
                          env.first_failure_ms / 1000 if env.first_failure_ms else None)
            due = (env.not_before_ms or 0) / 1000 - time.time()
            if due > 0:  # the head of a retry partition waits; the partition behind it is paused by flow control
                st.progress_at = time.monotonic() + due  # waiting on purpose is not being stuck (/readyz)
                await asyncio.sleep(due)
                if st.revoked:
                    return None
        try:
            ctx.idempotency_key = self._idempotency_key(spec, model, ctx)
        except Exception as exc:
            return await self._divert(st, m, spec.quarantine, "quarantine", exc, 0, None)
        store = self._store
        if store is None:
            return await self._attempts(st, m, model, ctx, gate_held=False, prior=prior)
        # one delivery per idempotency key at a time inside this worker; the store fences other workers
        key = ctx.idempotency_key
        while key in self._keys_in_flight:
            await self._keys_in_flight[key].wait()
        self._keys_in_flight[key] = asyncio.Event()
        try:
            return await self._claim_and_run(st, m, model, ctx, prior)
        finally:
            self._keys_in_flight.pop(key).set()

    async def _claim_and_run(self, st: PartitionState, m: Any, model: Any, ctx: Context,
                             prior: BaseException | None = None) -> str | None:
        """Claim the idempotency key, enforce the crash-loop limit, run.

        A message already delivered before without resolving is a *suspect*: it takes the worker's solo
        gate *before* its claim bumps the delivery counter, so a crash while it runs alone is blamed on
        it only, and innocent messages that merely shared a crash never reach the limit.
        """
        spec = st.spec
        store = self._store
        gate = self._gate
        assert store is not None and gate is not None
        suspect = False
        replayed_from = ctx.header("streamguard.replayed-from")
        if replayed_from:
            await self._reset_once_for_replay(ctx.idempotency_key, replayed_from.decode("utf-8", "replace"))
        first: ClaimOutcome | None = None
        if spec.max_deliveries is not None:
            first = await store.claim_unless_suspect(ctx.idempotency_key)
            suspect = first is None
        if suspect:
            await gate.exclusive()
        try:
            while True:
                if first is not None:
                    claim, first = first, None
                else:
                    claim = await store.claim(ctx.idempotency_key)
                if st.revoked:
                    return None
                if claim.status is ClaimStatus.DONE:
                    return "duplicate_skipped"
                if claim.status is ClaimStatus.ACQUIRED:
                    break
                await asyncio.sleep(min(1.0, self.settings.lease_seconds / 4))  # BUSY: someone else holds it
            self._held[ctx.idempotency_key] = self._held.get(ctx.idempotency_key, 0) + 1
            self._ensure_renewer()
            if spec.max_deliveries is not None and claim.deliveries > spec.max_deliveries:
                exc2 = CrashLoopDetected(f"delivered {claim.deliveries - 1} times without resolving "
                                         f"(max_deliveries={spec.max_deliveries})")
                return await self._divert(st, m, spec.quarantine, "quarantine", exc2, claim.deliveries - 1,
                                          ctx.idempotency_key, release=True, keep_count=True)
            return await self._attempts(st, m, model, ctx, gate_held=suspect, prior=prior)
        finally:
            held = self._held.get(ctx.idempotency_key, 0) - 1
            if held > 0:
                self._held[ctx.idempotency_key] = held
            else:
                self._held.pop(ctx.idempotency_key, None)
            if suspect:
                await gate.release_exclusive()

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = self._loop.create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        """Keep the claims of long-running handlers alive (every lease/3), so no other worker takes them over
        while this one is still working; stops when nothing is held."""
        store = self._store
        assert store is not None
        lease = self.settings.lease_seconds
        while self._held:
            await asyncio.sleep(lease / 3)
            keys = list(self._held)
            if not keys:
                break

            def renew_all(keys: list[str] = keys) -> int:
                return sum(1 for k in keys if not store.store.renew(k, self.worker_id, lease))

            lost = await asyncio.get_running_loop().run_in_executor(self._store_pool, renew_all)
            if lost:
                log.warning("%d claim(s) could not be renewed (taken over after expiry)", lost)

    async def _reset_once_for_replay(self, key: str, replayed_from: str) -> None:
        """A person replayed or released this record: give it a fresh crash-loop budget, once.

        A marker key per replayed record (claimed and completed in the store) makes the reset happen the
        first time only, so a released message that crashes the worker again is still stopped.
        """
        store = self._store
        assert store is not None
        marker = f"streamguard:replay-reset:{replayed_from}"
        claim = await store.claim(marker)
        if claim.status is ClaimStatus.ACQUIRED and claim.deliveries == 1:
            await store.call("reset_deliveries", key)
            await store.complete(marker)

    async def _attempts(self, st: PartitionState, m: Any, model: Any, ctx: Context, gate_held: bool,
                        prior: BaseException | None = None) -> str | None:
        """Run the handler until it succeeds or the policy gives up; ``prior`` is a first attempt that
        already failed elsewhere (the serial lane)."""
        spec = st.spec
        policy = spec.retry or DEFAULT_RETRY
        first_failure: float | None = ctx.origin[5] if ctx.origin else None
        attempt = ctx.origin[4] if ctx.origin else 0
        retried = ctx.origin is not None
        gate = self._gate
        assert gate is not None
        while True:
            if st.revoked:
                await self._release(ctx)
                return None
            wait = self._open_breaker_wait(spec)
            if wait is not None and spec.on_open == "pause":
                self.stats["breaker_waits"] += 1
                await asyncio.sleep(wait)
                continue
            attempt += 1
            ctx.attempt = attempt
            fn = spec.fallback if (wait is not None and spec.fallback is not None) else spec.fn
            if fn is spec.fallback:
                self.stats["fallbacks"] += 1
            if not gate_held and not gate.try_shared():
                await gate.shared()
            started = time.monotonic()
            try:
                if prior is not None:
                    failed_before, prior = prior, None
                    raise failed_before
                await self._invoke(spec, fn, model, ctx)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if isinstance(exc, LeaseLost):  # another owner took the key over and finished it
                    return "duplicate_skipped"
                outage = self._open_breaker_wait(spec)
                if isinstance(exc, CircuitOpen) or (outage is not None and not isinstance(exc, HandlerSignal)):
                    # the dependency is down: wait for it without burning an attempt (no DLQ flood)
                    attempt -= 1
                    if spec.on_open == "fallback" and fn is not spec.fallback and outage is not None:
                        continue  # degrade: the next pass serves the fallback
                    self.stats["breaker_waits"] += 1
                    await asyncio.sleep(max(0.05, exc.retry_after if isinstance(exc, CircuitOpen) else outage or 0))
                    continue
                now = time.time()
                first_failure = first_failure or now
                decision = policy.decide(exc, attempt, first_failure, now)
                if isinstance(decision, GiveUp) or isinstance(exc, (PermanentFailure, Quarantine)):
                    if isinstance(exc, Quarantine):
                        return await self._divert(st, m, spec.quarantine, "quarantine", exc, attempt,
                                                  ctx.idempotency_key, release=True, first_failure=first_failure,
                                                  origin=ctx.origin)
                    return await self._divert(st, m, spec.dlq, "dead-letter", exc, attempt, ctx.idempotency_key,
                                              release=True, first_failure=first_failure, origin=ctx.origin)
                if spec.retry_topics:  # non-blocking: hand the message to a retry topic and move on
                    await self._release(ctx)
                    return await self._to_retry_topic(st, m, ctx, exc, attempt, first_failure)
                retried = True
                self.stats["retries"] += 1
                self.metrics.retries.labels(topic=st.topic).inc()
                await asyncio.sleep(decision.delay)
                continue
            finally:
                if not gate_held:
                    gate.release_shared()
                self._observe_duration(st.topic, time.monotonic() - started)
            if self._store is not None and not ctx.transaction_used:
                await self._store.complete(ctx.idempotency_key)
            return "retried" if retried else "ok"

    async def _invoke(self, spec: HandlerSpec, fn: Callable[..., Any], model: Any, ctx: Context) -> None:
        args = (model, ctx) if spec.takes_ctx else (model,)
        timeout = spec.timeout
        if spec.is_async or asyncio.iscoroutinefunction(fn):
            if timeout is None:
                await fn(*args)
                return
            # one shared watchdog instead of a timer per message (a timer each costs ~8 us of loop time)
            task = asyncio.current_task()
            assert task is not None
            self._deadlines[task] = time.monotonic() + timeout
            if self._watchdog is None:
                self._watchdog = self._loop.call_later(self._watch_every, self._watch_deadlines)
            try:
                await fn(*args)
            except asyncio.CancelledError:
                if task in self._timed_out:
                    self._timed_out.discard(task)
                    task.uncancel()
                    raise HandlerTimeout(f"handler {spec.name} ran past its timeout of {timeout}s") from None
                raise
            finally:
                self._deadlines.pop(task, None)
                if task in self._timed_out:  # the handler swallowed our cancellation: take it back
                    self._timed_out.discard(task)
                    task.uncancel()
            return
        fut = self._loop.run_in_executor(self._pool, fn, *args)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            if isinstance(exc, HandlerTimeout) or (fut.done() and not fut.cancelled()):
                raise
            raise HandlerTimeout(f"handler {spec.name} ran past its timeout of {timeout}s "
                                 "(sync handlers cannot be interrupted; its thread runs on)") from None

    def _watch_deadlines(self) -> None:
        """Cancel async handlers past their deadline (granularity: ``_watch_every`` seconds)."""
        self._watchdog = None
        now = time.monotonic()
        for task, deadline in list(self._deadlines.items()):
            if now >= deadline and task not in self._timed_out:
                self._timed_out.add(task)
                task.cancel()
        if self._deadlines:
            self._watchdog = self._loop.call_later(self._watch_every, self._watch_deadlines)

    def _open_breaker_wait(self, spec: HandlerSpec) -> float | None:
        waits = [b.retry_after() for b in spec.breakers if b.state == "open"] if spec.breakers else []
        return max(waits) if waits else None

    async def _release(self, ctx: Context) -> None:
        """Give the claim back after a clean stop (revoked, sent to a retry topic): not a crash, so the
        crash-loop counter starts over."""
        if self._store is not None:
            await self._release_key(ctx.idempotency_key, keep_count=False)

    async def _release_key(self, key: str, *, keep_count: bool) -> None:
        """Release ``key``; unless ``keep_count``, also zero its delivery counter in the same store job.

        The counter must count only deliveries that ended *without* a clean outcome (the worker died or hung);
        a delivery that ended in an acknowledged DLQ write, a retry topic or a revoke did not crash anything.
        """
        store = self._store
        assert store is not None
        try:
            await store.call_with(store.release_now, key, keep_count)
        except Exception as exc:
            log.warning("could not release claim %s: %s", key, exc)

    def _failure_info(self, st: PartitionState, exc: BaseException, attempts: int, reason: str,
                      idem_key: str | None, first_failure: float | None) -> FailureInfo:
        etype, emsg, stack = describe_error(exc)
        return FailureInfo(error_type=etype, error_message=emsg, stack=stack, attempts=attempts,
                           first_failure_ms=int((first_failure or time.time()) * 1000),
                           last_failure_ms=int(time.time() * 1000), handler=st.spec.name, worker_id=self.worker_id,
                           reason=reason, idempotency_key=idem_key)

    async def _to_retry_topic(self, st: PartitionState, m: Any, ctx: Context, exc: BaseException, attempt: int,
                              first_failure: float | None) -> str | None:
        """Send the original record to the next retry topic with a not-before time; resolve it here."""
        origin_spec = self._specs[st.spec.retry_of] if st.spec.retry_of else st.spec
        level = min(st.spec.retry_level + 1, len(origin_spec.retry_topics))
        delay = origin_spec.retry_topics[level - 1]
        src = ctx.origin or (st.topic, st.partition, m.offset(), m.timestamp()[1], 0, None)
        info = self._failure_info(st, exc, attempt, "retry", ctx.idempotency_key, first_failure)
        key, value = m.key(), m.value()
        headers = retry_headers(m.headers(), source_topic=src[0], partition=src[1], offset=src[2],
                                timestamp_ms=src[3], not_before_ms=int((time.time() + delay) * 1000),
                                attempt=attempt, info=info, key_len=len(key or b""), value_len=len(value or b""))
        if not await self._write(st, m, origin_spec.retry_topic(level), key, value, headers):
            return None
        self.stats["sent_to_retry_topic"] += 1
        self.metrics.retries.labels(topic=origin_spec.topic).inc()
        return "retry_scheduled"

    async def _write(self, st: PartitionState, m: Any, topic: str, key: bytes | None, value: bytes | None,
                     headers: list[tuple[str, bytes]]) -> bool:
        """Produce and wait for the ack, retrying forever (the partition waits); False if fenced meanwhile."""
        producer = self._producer
        assert producer is not None
        delay = 0.2
        self._dlq_pending(+1)
        try:
            while True:
                if st.revoked:
                    return False
                try:
                    fut = producer.send(topic, value, key, headers, partition=None)
                    if _CRASH:
                        maybe_crash("during_dlq_write")
                    await asyncio.wrap_future(fut)
                    break
                except KafkaOperationError as err:
                    self.stats["failure_write_errors"] += 1
                    log.warning("could not write %s[%d]@%d to %s (%s); retrying in %.1fs; the partition does "
                                "not commit past it", st.topic, st.partition, m.offset(), topic, err, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            self._dlq_pending(-1)
        return True

    async def _divert(self, st: PartitionState, m: Any, topic: str, reason: str, exc: BaseException,
                      attempts: int, idem_key: str | None, *, release: bool = False, keep_count: bool = False,
                      first_failure: float | None = None,
                      origin: tuple[str, int, int, int | None, int, float | None] | None = None) -> str | None:
        """Write the original record to the DLQ or quarantine topic; wait for the ack, retrying forever."""
        info = self._failure_info(st, exc, attempts, reason, idem_key, first_failure)
        src = origin or (st.topic, st.partition, m.offset(), m.timestamp()[1], 0, None)
        key, value = m.key(), m.value()
        headers = dead_letter_headers(m.headers(), source_topic=src[0], partition=src[1], offset=src[2],
                                      timestamp_ms=src[3], info=info, key_len=len(key or b""),
                                      value_len=len(value or b""))
        if not await self._write(st, m, topic, key, value, headers):
            return None
        extra: dict[str, Any] = {"topic": st.topic, "partition": st.partition, "offset": m.offset(),
                                 "key": key.decode("utf-8", "replace") if key else None, "attempt": attempts,
                                 "idempotency_key": idem_key, "worker": self.worker_id}
        if self.settings.log_values:  # explicit debug switch: values may be sensitive
            extra["value_preview"] = (value or b"")[:200].decode("utf-8", "replace")
        log.warning("%s %s[%d]@%d -> %s: %s: %s", reason, st.topic, st.partition, m.offset(), topic,
                    info.error_type, info.error_message, extra=extra)
        if release and self._store is not None and idem_key is not None:
            # released, not completed: the key was never handled, so a replay of this record must run
            await self._release_key(idem_key, keep_count=keep_count)
        return "quarantined" if reason == "quarantine" else "dead_lettered"

    # ------------------------------------------------------------------ metrics hooks
    def _count(self, outcome: str, topic: str, n: int = 1) -> None:
        """(loop thread) Count ``n`` messages by outcome; exported at the end of this loop iteration."""
        key = (topic, outcome)
        self._pending_counts[key] = self._pending_counts.get(key, 0) + n
        if not self._metrics_armed:
            self._arm_metrics()

    def _observe_duration(self, topic: str, seconds: float) -> None:
        """(loop thread) A handler duration; observed with the others of this loop iteration at once."""
        values = self._pending_durations.get(topic)
        if values is None:
            values = self._pending_durations[topic] = []
        values.append(seconds)
        if not self._metrics_armed:
            self._arm_metrics()

    def _arm_metrics(self) -> None:
        self._metrics_armed = True
        self._loop.call_soon(self._flush_metrics)

    def _flush_metrics(self) -> None:
        """Export what this loop iteration counted: one locked increment per (topic, outcome) and histogram
        bucket touched instead of two or three per message (the async hot path's largest fixed cost)."""
        self._metrics_armed = False
        counts, self._pending_counts = self._pending_counts, {}
        for (topic, outcome), n in counts.items():
            child = self._outcome_children.get((topic, outcome))
            if child is None:
                if outcome in ("preresolved_skipped", "fenced"):
                    continue
                child = self._outcome_children[(topic, outcome)] = self.metrics.messages.labels(
                    topic=topic, outcome=outcome)
            child.inc(n)
        durations, self._pending_durations = self._pending_durations, {}
        for topic, values in durations.items():
            child = self._duration_children.get(topic)
            if child is None:
                child = self._duration_children[topic] = self.metrics.handler_duration.labels(topic=topic)
            observe_many(child, values)

    def _dlq_pending(self, delta: int) -> None:
        self.stats["failure_writes_pending"] += delta
        self.metrics.dlq_produce_pending.set(self.stats["failure_writes_pending"])

    def _gauges(self) -> list[tuple[str, int, int, int | None]]:
        """(loop thread) (topic, partition, in-flight, committable) of every assigned partition."""
        return [(st.topic, st.partition, st.scheduler.buffered, st.tracker.committable())
                for st in self._states.values()]

    def _update_gauges(self) -> None:
        """(poll thread) In-flight and lag gauges; lag from the cached high watermark of the last fetch."""
        for topic, partition, buffered, committed in self._call(self._gauges):
            self.metrics.inflight_messages.labels(topic=topic, partition=str(partition)).set(buffered)
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0 and committed is not None:
                self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, high - committed))

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, data)
            except Exception:
                log.exception("on_event hook failed")

    # ------------------------------------------------------------------ shutdown
    def _install_signal_handlers(self) -> Callable[[], None]:
        if not self.install_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, frame: object) -> None:
            hard = self._stop.is_set()
            log.warning("signal %d: %s", signum, "leaving now" if hard else "draining (signal again to leave now)")
            self.stop(hard=hard)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _all_idle(self) -> bool:
        return all(st.idle for st in self._states.values())

    def _shutdown(self, consumer: Any) -> None:
        deadline = time.monotonic() + self.settings.shutdown_timeout
        try:
            assignment = consumer.assignment()
            if assignment:
                consumer.pause(assignment)
        except KafkaException:
            pass
        while not self._hard_stop.is_set() and time.monotonic() < deadline:
            if self._call(self._all_idle):
                break
            self._poll_once(consumer, 1, 0.05)
        self._commit(asynchronous=False)
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the consumer: %s", exc)

    def _teardown(self) -> None:
        if self._producer is not None:
            left = self._producer.close(10)
            if left:
                log.error("%d failure-topic records were not acknowledged at shutdown", left)
        if self._loop_thread.is_alive():
            def cancel_all() -> None:
                for task in asyncio.all_tasks(self._loop):
                    task.cancel()
                self._loop.call_soon(self._loop.stop)

            self._loop.call_soon_threadsafe(cancel_all)
            self._loop_thread.join(5)
        if not self._loop_thread.is_alive():
            self._flush_metrics()  # what the last loop iterations counted (the loop has stopped: no race)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._store_pool.shutdown(wait=True)
        if self.app.idempotency is not None:
            self.app.idempotency.close()
        log.info("worker %s stopped: %s", self.worker_id, dict(self.stats))

