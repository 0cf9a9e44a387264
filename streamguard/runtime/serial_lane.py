"""The partition-serial lane: ``Worker``'s fast path for sync handlers with ``ordering="partition"``.

A run of one partition's messages is handled in order in ONE pool job instead of a task and a thread hand-off
per message; the first message that needs more (a failure, undecodable or oversized bytes, a timeout) leaves
the lane for the full per-message path (message_path.py). With an idempotency store the lane claims and
completes a chunk at a time (claimed_lane.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from streamguard.context import Context
from streamguard.errors import DecodeError, HandlerTimeout
from streamguard.observability.metrics import observe_many
from streamguard.runtime.claimed_lane import Chunk, run_claimed_lane
from streamguard.runtime.partition import LaneJob, PartitionState
from streamguard.runtime.worker_state import WorkerState

log = logging.getLogger("streamguard.worker")  # the worker's logger, whichever part of it logs


class SerialLane(WorkerState):
    """Partition-serial sync handlers in batches, one pool job each (loop thread, pool thread)."""

    # ------------------------------------------------------------------ the serial lane (loop thread)
    LANE_BATCH = 2000

    def _start_lane(self, st: PartitionState, gate_held: bool = False) -> None:
        """Partition-serial sync handlers: run the next messages in order in ONE pool job, not a task each.

        The first failure (or an undecodable / oversized record) ends the batch and goes down the full
        per-message path (retries, DLQ, quarantine) with the failure counted as its first attempt.
        With a store, a job holds a shared slot of the solo gate, as every normal run does: a suspect
        (solo_gate.py) runs only once the lanes' current jobs have ended, and no job starts while it runs.
        """
        gate = self._gate if self._store is not None else None
        if st.lane_job is not None or st.draining or st.revoked or not st.scheduler.startable:
            if gate_held:
                assert gate is not None
                gate.release_shared()
            return
        if gate is not None and not gate_held and not gate.try_shared():
            if not st.lane_gate_wait:  # one waiter per partition; it starts the lane when the suspect is done
                st.lane_gate_wait = True
                self._loop.create_task(self._start_lane_after_suspect(st))
            return
        started = st.scheduler.take()
        key = started[0][0]
        batch = st.scheduler.run_of(key, self.LANE_BATCH)
        job = st.lane_job = LaneJob()
        job.gated = gate is not None
        if len(batch) == st.scheduler.buffered:
            job.extend_max = min(self.LANE_EXTEND_MAX, st.flow.limit // 2)  # released only when the job ends
            job.more = []  # the batch is the whole queue: what arrives next may extend it (_lane_extend)
        fut = self._loop.run_in_executor(self._pool, self._run_lane, st, batch, job)
        fut.add_done_callback(lambda f: self._lane_done(st, key, batch, job, f))
        if st.spec.timeout is not None:
            self._loop.call_later(min(st.spec.timeout, 1.0) / 2, self._watch_lane, st, key, batch, job)

    async def _start_lane_after_suspect(self, st: PartitionState) -> None:
        gate = self._gate
        assert gate is not None
        await gate.shared()
        st.lane_gate_wait = False
        self._start_lane(st, gate_held=True)

    def _run_lane(self, st: PartitionState, batch: list[Any], job: LaneJob) -> tuple[int, Any, BaseException | None]:
        """(pool thread) Handle ``batch`` in order; stop at the first message that needs the full path."""
        durations: list[float] = []  # observed as one batch when the lane ends (observe_many)
        try:
            if self._store is not None:
                return run_claimed_lane(st, batch, job, self._store, self.worker_id, self._idempotency_key,
                                        durations.append, self._lane_extend)
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
        now = time.monotonic()
        if self._store is None:
            if job.current_started and now - job.current_started > timeout:
                job.abandoned = True
                done = job.done
                self._lane_finish(st, key, batch, job, done, batch[done] if done < len(batch) else None,
                                  self._lane_timeout(st))
                return
        else:  # the claimed lane: whoever pops the running message's entry first owns the chunk's settling
            for index, started in list(job.running.items()):
                if now - started > timeout and job.running.pop(index, None) is not None:
                    job.abandoned = True  # the chunk's successes before it are completed, its other claims undone
                    self._loop.create_task(self._settle_abandoned(st, key, batch, job, index, job.chunk,
                                                                  self._lane_timeout(st)))
                    return
        self._loop.call_later(min(timeout, 1.0) / 2, self._watch_lane, st, key, batch, job)

    @staticmethod
    def _lane_timeout(st: PartitionState) -> HandlerTimeout:
        return HandlerTimeout(f"handler {st.spec.name} ran past its timeout of {st.spec.timeout}s "
                              "(sync handlers cannot be interrupted; its thread runs on)")

    async def _settle_abandoned(self, st: PartitionState, key: Any, batch: list[Any], job: LaneJob, index: int,
                                chunk: Chunk | None, exc: BaseException) -> None:
        store = self._store
        assert store is not None
        try:
            if chunk is not None:  # the lane was running it: it holds claims up to and past ``index``
                await store.call_with(chunk.settle, store, batch, index - chunk.start, st.topic, st.partition)
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
        if job.gated:
            assert self._gate is not None
            self._gate.release_shared()
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
