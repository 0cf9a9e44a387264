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

``Worker`` is assembled from one module per concept: serial_lane.py (partition-serial sync handlers in
batches), message_path.py (one message from fetch to outcome), failure_writes.py (retry / DLQ / quarantine
topics) and rebalance.py (assign / revoke / lost); worker_state.py declares what they share. This module keeps
the rest: startup, the poll loop and flow control, commits, dispatch, metrics hooks and shutdown.
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

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamguard.chaos.crashpoints import armed, maybe_crash
from streamguard.errors import ConfigError
from streamguard.kafka.clients import ensure_topics, make_admin, make_consumer, partition_counts
from streamguard.kafka.producer import ReliableProducer
from streamguard.observability.metrics import observe_many
from streamguard.runtime.failure_writes import FailureWrites
from streamguard.runtime.gaps import GapDetector
from streamguard.runtime.message_path import DEFAULT_RETRY as DEFAULT_RETRY  # re-exported (testing.handler_kit)
from streamguard.runtime.message_path import MessagePath
from streamguard.runtime.partition import Flow, PartitionState
from streamguard.runtime.rebalance import Rebalances
from streamguard.runtime.serial_lane import SerialLane
from streamguard.runtime.solo_gate import SoloGate
from streamguard.runtime.store_batcher import StoreBatcher

if TYPE_CHECKING:
    from streamguard.app import App, HandlerSpec

log = logging.getLogger("streamguard.worker")
_CRASH = armed()
T = TypeVar("T")

# bytes a buffered message costs beyond its key and value: tracemalloc measured ~280 B for a held
# confluent_kafka Message with 100-byte values (object, key/value bytes objects, deque slot); rounded up
# for the scheduler's bookkeeping
MESSAGE_OVERHEAD = 400


class Worker(SerialLane, MessagePath, FailureWrites, Rebalances):
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
                msgs = self._track_run(st, msgs)
                st.scheduler.submit_many(None, msgs)
                job = st.lane_job
                if job is not None and job.more is not None and msgs:
                    with job.lock:
                        if job.more is not None:  # the running lane has not closed: it takes these next
                            job.more.append(msgs)
            else:
                self._dispatch_each(st, msgs)
            self._start_ready(st)

    def _track_run(self, st: PartitionState, msgs: list[Any]) -> list[Any]:
        """Track a fetched run of one partition; returns it without the offsets already resolved."""
        skipped = st.tracker.track_many([m.offset() for m in msgs])
        if skipped:
            drop = set(skipped)
            msgs = [m for i, m in enumerate(msgs) if i not in drop]
            st.flow.released += len(skipped)
            self.stats["preresolved_skipped"] += len(skipped)
        return msgs

    def _dispatch_each(self, st: PartitionState, msgs: list[Any]) -> None:
        gaps = self._gaps
        if gaps is None and st.spec.ordering == "key":  # the common case: track the run at once
            submit = st.scheduler.submit
            for m in self._track_run(st, msgs):
                submit(m.key(), m)
            return
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
            following = st.scheduler.take_one()
            if st.scheduler.startable:  # normally not: a finish frees one slot
                self._start_ready(st)
            return following
        elif st.drained is not None and st.scheduler.running == 0:
            st.drained.set()
        return None

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

