"""``Worker``'s rebalance callbacks: install assigned partitions, drain and commit revoked ones, drop lost ones.

The callbacks run on the poll thread inside ``consume()``; the partition state they change belongs to the
loop thread, so each one hands its work there with ``_call``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

from confluent_kafka import OFFSET_INVALID, KafkaException, TopicPartition

from streamguard.core.offsets import decode_metadata
from streamguard.runtime.partition import Flow, PartitionState
from streamguard.runtime.worker_state import WorkerState

log = logging.getLogger("streamguard.worker")  # the worker's logger, whichever part of it logs


class Rebalances(WorkerState):
    """Assign, revoke and lose partitions (poll thread, state changed on the loop thread)."""

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
            # with a store the lane claims and completes a chunk at a time (claimed_lane.py), and the fast path
            # claims and completes with the other calls of its loop tick (message_path._run_fast)
            st.lane = plain and not spec.is_async and spec.ordering == "partition"
            st.fast = plain and spec.is_async and spec.max_message_bytes is None
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
