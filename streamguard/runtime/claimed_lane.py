"""The serial lane with an idempotency store: partition-serial sync handlers, claimed a chunk at a time.

The per-message path (claim, run, complete as three awaited store calls plus a coroutine per message)
costs far more than the store itself. A partition-serial sync handler runs its messages in order on one
thread anyway, so this lane claims a chunk of keys in ONE store call, runs the handlers, and completes the
successes in ONE more; a message counts as resolved only after its completion is written.

Only the common case takes it: a record whose idempotency key is its own coordinates (no ``key=``
function, no ``idempotency-key`` header: such keys may repeat across partitions, and the per-message path
serialises them worker-wide), not replayed, decodable, within the size limit, never delivered before
(``claim_unless_suspect``). Everything else ends the chunk and goes down the full path, which also gets
the first failure (counted as its first attempt). Claims of messages the lane did not finish are undone
(released, counter back to 0): they were fresh, and a failure that returned is not a crash, so the full
path starts their crash-loop count from scratch.

The common chunk costs the lane no per-key work at all: a store with offset ranges (SqliteStore) claims a
chunk nobody touched yet as one span (``claim_span``) and settles it as one; keys are only spelled out
when the store says a chunk needs per-key bookkeeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamguard.context import Context
from streamguard.core.idempotency import ClaimOutcome, ClaimStatus
from streamguard.errors import DecodeError
from streamguard.stores.sqlite_ranges import is_dense

if TYPE_CHECKING:
    from streamguard.runtime.partition import LaneJob, PartitionState
    from streamguard.runtime.store_batcher import StoreBatcher

MAX_CHUNK = 2000  # keys claimed per store call, at most: a crash leaves at most this many suspects behind

ABANDONED = object()  # returned as ``failed`` when the timeout watchdog settled the batch instead


class Chunk:
    """One claimed chunk of a lane batch, ``batch[start:start + size]``: what settling it needs, whether the
    lane settles it or the timeout watchdog does."""

    __slots__ = ("acquired", "ctxs", "dupes", "first", "keys", "per_key", "size", "start")

    def __init__(self, start: int, size: int, ctxs: list[Context | None] | None) -> None:
        self.start = start
        self.size = size
        self.ctxs = ctxs  # the records' Contexts, when any record needed one; else None
        self.keys: list[str] | None = None  # the records' keys, once spelled out
        self.acquired: list[bool] | None = None  # claimed by this chunk, per record (None: all of them)
        self.dupes: set[int] = set()  # chunk indices already DONE: resolved without running
        self.first: int | None = None  # claimed as a range row starting at this offset (else per key)
        self.per_key: set[str] = set()  # keys of a range chunk claimed with rows of their own

    def spell_keys(self, batch: list[Any], topic: str, partition: int) -> list[str]:
        if self.keys is None:
            self.keys = [f"{topic}/{partition}/{m.offset()}" for m in batch[self.start:self.start + self.size]]
        return self.keys

    def settle(self, store: StoreBatcher, batch: list[Any], ran: int, topic: str, partition: int) -> None:
        """(store thread) Complete the chunk's first ``ran`` records (those it claimed and ran, unless their
        ``ctx.transaction()`` completed them already); undo the claims of the rest."""
        idempotency: Any = store.store
        if self.first is not None:  # a range: DONE through the last record that ran, the rest dropped
            through = batch[self.start + ran - 1].offset() if ran else None
            if idempotency.settle_chunk(topic, partition, self.first, store.owner, through):
                if not self.per_key:
                    return
                own = self.per_key  # only keys with rows of their own are settled key by key
            else:
                own = None  # a per-key call expanded the range meanwhile: every key is settled key by key
        else:
            own = None
        keys = self.spell_keys(batch, topic, partition)
        acquired, ctxs = self.acquired, self.ctxs
        completed, undo = [], []
        for j, key in enumerate(keys):
            if (acquired is not None and not acquired[j]) or (own is not None and key not in own):
                continue
            if j >= ran:
                undo.append(key)
            elif j not in self.dupes and not (ctxs is not None and (ctx := ctxs[j]) is not None
                                              and ctx.transaction_used):
                completed.append(key)
        if completed:
            idempotency.complete_many(completed, store.owner)
        for key in undo:
            store.release_now(key, keep_count=False)


def run_claimed_lane(st: PartitionState, batch: list[Any], job: LaneJob, store: StoreBatcher, worker_id: str,
                     key_of: Any, observe: Callable[[float], None],
                     extend: Callable[[LaneJob, list[Any]], None]) -> tuple[int, Any, BaseException | None]:
    """(pool thread) Handle ``batch`` in order, and what ``extend`` appends to it once it is done; returns
    (resolved count, first message for the full path or None, its exception or None)."""
    spec = st.spec
    fn, decoder, takes_ctx, limit = spec.fn, spec.decoder, spec.takes_ctx, spec.max_message_bytes
    topic, partition = st.topic, st.partition
    idempotency = store.store
    custom_key = spec.key is not None
    claim_span = getattr(idempotency, "claim_span", None)  # a store that keeps a chunk as one range row
    timed = spec.timeout is not None  # a watchdog may take the running message over (job.running)
    running = job.running
    clock = time.monotonic
    i = 0
    while True:
        if i == len(batch):
            if job.more is None:
                break
            extend(job, batch)  # takes what was dispatched meanwhile, or closes the job to more
            if i == len(batch):
                break
        if job.stop:
            return i, None, None
        models: list[Any] = []
        ctxs: list[Context | None] | None = None  # one per record once a record needs a Context
        handover = None  # a record of this chunk's range that only the full path may take
        started = clock()
        for m in batch[i:i + st.lane_chunk]:
            value = m.value()
            if limit is not None and (len(value or b"") + len(m.key() or b"")) > limit:
                handover = m
                break
            try:
                model = decoder(value)
            except DecodeError:
                handover = m
                break
            headers = m.headers()
            if headers or takes_ctx or custom_key:
                offset = m.offset()
                coordinates = f"{topic}/{partition}/{offset}"
                ctx = Context(topic, partition, offset, m.key(), headers, m.timestamp()[1], 1, coordinates,
                              worker_id, idempotency)
                try:
                    key = key_of(spec, model, ctx)
                except Exception:
                    handover = m
                    break
                if key != coordinates or ctx.header("streamguard.replayed-from") is not None:
                    handover = m
                    break
                ctx.idempotency_key = key
                if ctxs is None:
                    ctxs = [None] * len(models)
                ctxs.append(ctx)
            elif ctxs is not None:
                ctxs.append(None)
            models.append(model)
        size = len(models)
        if not size:
            return i, handover, None
        chunk = Chunk(i, size, ctxs)
        stop_at = _claim(chunk, batch, topic, partition, store, claim_span)
        if stop_at < size:  # a suspect (delivered before, unresolved) or held elsewhere: the full path decides
            handover = batch[i + stop_at]
        job.chunk = chunk  # before a message runs: the watchdog settles it if it takes one over
        dupes = chunk.dupes
        ran = 0  # chunk records resolved (run, or DONE already)
        failed: Any = None
        exc: BaseException | None = None
        t0 = clock()
        for j in range(stop_at):
            if job.stop:
                break
            if dupes and j in dupes:
                job.dupes += 1
                ran = j + 1
                t0 = clock()
                continue
            if timed:
                running[i + j] = t0
            try:
                if takes_ctx:
                    fn(models[j], ctxs[j])  # type: ignore[index]
                else:
                    fn(models[j])
            except BaseException as err:
                failed, exc = batch[i + j], err
            t1 = clock()
            if timed and running.pop(i + j, None) is None:  # the watchdog took it over and settles the chunk:
                return job.done, ABANDONED, None             # hands off the store from here on
            observe(t1 - t0)
            t0 = t1
            if failed is not None:
                break
            ran = j + 1
        if ran:  # a chunk should finish well inside its claims' lease: size the next one by this one's pace
            pace = (clock() - started) / ran
            st.lane_chunk = max(1, min(MAX_CHUNK, int(store.lease / 4 / pace) if pace > 0 else MAX_CHUNK))
        # no message runs now, so the watchdog cannot take this chunk over: the lane settles it
        chunk.settle(store, batch, ran, topic, partition)
        job.chunk = None
        i += ran
        job.done = i
        if failed is not None:
            return i, failed, exc
        if ran < stop_at:  # stopped (revoke / shutdown)
            return i, None, None
        if handover is not None:
            return i, handover, None
    return i, None, None


def _claim(chunk: Chunk, batch: list[Any], topic: str, partition: int, store: StoreBatcher,
           claim_span: Any) -> int:
    """Claim the chunk's keys; returns how many of its records, from its start, may run (the first one that
    may not is a suspect or held elsewhere)."""
    idempotency: Any = store.store
    msgs = batch[chunk.start:chunk.start + chunk.size]
    lo, hi = msgs[0].offset(), msgs[-1].offset()
    if claim_span is not None and is_dense(lo, hi, chunk.size):
        chunk.first = lo  # claimed as a range row either way
        if claim_span(topic, partition, lo, hi, store.owner, store.lease):  # the common case: nothing there yet
            return chunk.size
        offsets = [m.offset() for m in msgs]
        outcomes, chunk.per_key = idempotency.claim_chunk(topic, partition, offsets, store.owner, store.lease)
    else:
        outcomes = store.claim_unless_suspect_many(chunk.spell_keys(batch, topic, partition))
    return _sort_outcomes(chunk, outcomes)


def _sort_outcomes(chunk: Chunk, outcomes: list[ClaimOutcome | None]) -> int:
    chunk.acquired = acquired = [o is not None and o.status is ClaimStatus.ACQUIRED for o in outcomes]
    for j, o in enumerate(outcomes):
        if o is not None and o.status is ClaimStatus.DONE:
            chunk.dupes.add(j)
        elif not acquired[j]:
            return j
    return len(outcomes)
