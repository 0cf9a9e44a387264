"""The serial lane with an idempotency store: partition-serial sync handlers, claimed a chunk at a time.

The per-message path (claim, run, complete as three awaited store calls plus a coroutine per message)
costs far more than the store itself. A partition-serial sync handler runs its messages in order on one
thread anyway, so this lane claims a chunk of keys in ONE store transaction, runs the handlers, and
completes the successes in ONE more; a message counts as resolved only after its completion is written.

Only the common case takes it: a record whose idempotency key is its own coordinates (no ``key=``
function, no ``idempotency-key`` header: such keys may repeat across partitions, and the per-message path
serialises them worker-wide), not replayed, decodable, within the size limit, never delivered before
(``claim_unless_suspect``). Everything else ends the chunk and goes down the full path, which also gets
the first failure (counted as its first attempt). Claims of messages the lane did not finish are undone
(released, counter back to 0): they were fresh, and a failure that returned is not a crash, so the full
path starts their crash-loop count from scratch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from streamguard.context import Context
from streamguard.core.idempotency import ClaimStatus
from streamguard.errors import DecodeError
from streamguard.stores.sqlite_ranges import is_dense

if TYPE_CHECKING:
    from streamguard.runtime.partition import LaneJob, PartitionState
    from streamguard.runtime.store_batcher import StoreBatcher

MAX_CHUNK = 500  # keys claimed per transaction, at most: a crash leaves at most this many suspects behind

ABANDONED = object()  # returned as ``failed`` when the timeout watchdog settled the batch instead


def run_claimed_lane(st: PartitionState, batch: list[Any], job: LaneJob, store: StoreBatcher,
                     worker_id: str, key_of: Any, observe: Any) -> tuple[int, Any, BaseException | None]:
    """(pool thread) Handle ``batch`` in order; returns (resolved count, first message for the full path or
    None, its exception or None)."""
    spec = st.spec
    fn, decoder, takes_ctx, limit = spec.fn, spec.decoder, spec.takes_ctx, spec.max_message_bytes
    topic, partition = st.topic, st.partition
    idempotency = store.store
    custom_key = spec.key is not None
    claim_chunk = getattr(idempotency, "claim_chunk", None)  # a store that keeps a chunk as one range row
    clock = time.monotonic
    n = len(batch)
    i = 0
    while i < n:
        if job.stop:
            return i, None, None
        chunk: list[tuple[Any, Any, Context | None, str]] = []  # (record, model, its Context if needed, key)
        offsets: list[int] = []  # of the chunk's records
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
            offset = m.offset()
            coordinates = f"{topic}/{partition}/{offset}"
            headers = m.headers()
            if not (headers or takes_ctx or custom_key):  # the key can only be the coordinates: no Context
                chunk.append((m, model, None, coordinates))
                offsets.append(offset)
                continue
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
            chunk.append((m, model, ctx, key))
            offsets.append(offset)
        if not chunk:
            return i, handover, None
        if claim_chunk is not None and is_dense(offsets):
            outcomes, per_key = claim_chunk(topic, partition, offsets, store.owner, store.lease)
            job.chunk_range = (topic, partition, offsets[0], per_key, i)
        else:
            outcomes = store.claim_unless_suspect_many([key for _, _, _, key in chunk])
            job.chunk_range = None
        pairs = list(zip(chunk, outcomes, strict=True))
        job.claimed = [(i + j, key) for j, ((_, _, _, key), o) in enumerate(pairs)
                       if o is not None and o.status is ClaimStatus.ACQUIRED]
        job.ok_keys = []
        ran = 0  # chunk entries resolved or run
        failed: Any = None
        exc: BaseException | None = None
        for j, ((m, model, hctx, key), outcome) in enumerate(pairs):
            if job.stop:
                break
            if outcome is None or outcome.status is ClaimStatus.BUSY:
                failed = m  # a suspect (delivered before, unresolved) or held elsewhere: the full path decides
                break
            if outcome.status is ClaimStatus.DONE:
                job.dupes += 1
                ran = j + 1
                continue
            job.index = i + j  # before current_started: the watchdog reads them in the other order
            t0 = job.current_started = clock()
            try:
                if takes_ctx:
                    fn(model, hctx)
                else:
                    fn(model)
            except BaseException as err:
                failed, exc = m, err
            with job.lock:
                if job.abandoned:  # the watchdog settled this batch: hands off the store from here on
                    return job.done, ABANDONED, None
                job.current_started = 0.0
            observe(clock() - t0)
            if failed is not None:
                break
            if hctx is None or not hctx.transaction_used:
                job.ok_keys.append(key)
            ran = j + 1
        if ran:  # a chunk should finish well inside its claims' lease: size the next one by this one's pace
            pace = (clock() - started) / ran
            st.lane_chunk = max(1, min(MAX_CHUNK, int(store.lease / 4 / pace) if pace > 0 else MAX_CHUNK))
        with job.lock:
            if job.abandoned:
                return job.done, ABANDONED, None
            settle_chunk(store, job.ok_keys, [k for x, k in job.claimed if x >= i + ran], job.chunk_range,
                         batch[i + ran - 1].offset() if ran else None)
            job.ok_keys, job.claimed, job.chunk_range = [], [], None
            i += ran
            job.done = i
        if failed is not None:
            return i, failed, exc
        if ran < len(chunk):  # stopped (revoke / shutdown)
            return i, None, None
        if handover is not None:
            return i, handover, None
    return i, None, None


def settle_chunk(store: StoreBatcher, completed: list[str], undo: list[str],
                 chunk_range: tuple[str, int, int, set[str], int] | None = None,
                 done_through: int | None = None) -> None:
    """Write the completions of the chunk's successes; undo the claims of what it did not finish.

    A chunk claimed as a range is settled as one: DONE through ``done_through`` (the last offset of the
    finished prefix), the rest dropped; only its keys that had rows of their own are settled key by key.
    If a per-key call expanded the range meanwhile, every key is settled key by key.
    """
    if chunk_range is not None:
        topic, partition, first, per_key, _ = chunk_range
        if store.store.settle_chunk(topic, partition, first, store.owner, done_through):  # type: ignore[attr-defined]
            completed = [k for k in completed if k in per_key] if per_key else []
            undo = [k for k in undo if k in per_key] if per_key else []
    if completed:
        store.store.complete_many(completed, store.owner)
    for key in undo:
        store.release_now(key, keep_count=False)
