"""One message through ``Worker`` (loop thread): decode, idempotency claim, attempts, timeouts, breakers.

The async fast path (``_process_fast``) lives here too: whatever it cannot settle with one successful call
goes on down ``_process``, as does the message a serial lane stops at, so the full path is read in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamguard.context import Context
from streamguard.core.envelope import parse_envelope
from streamguard.core.idempotency import ClaimOutcome, ClaimStatus
from streamguard.core.retry import GiveUp, Retry
from streamguard.errors import (
    CircuitOpen,
    CrashLoopDetected,
    DecodeError,
    HandlerSignal,
    HandlerTimeout,
    LeaseLost,
    MessageTooLarge,
    PermanentFailure,
    Quarantine,
)
from streamguard.runtime.partition import PartitionState
from streamguard.runtime.worker_state import WorkerState

if TYPE_CHECKING:
    from streamguard.app import HandlerSpec

log = logging.getLogger("streamguard.worker")  # the worker's logger, whichever part of it logs

DEFAULT_RETRY = Retry(attempts=3, backoff=(0.2, 5.0))


class MessagePath(WorkerState):
    """One message from fetch to outcome (loop thread)."""

    # ------------------------------------------------------------------ one message (loop thread)
    async def _process_fast(self, st: PartitionState, key: Any, m: Any) -> None:
        """The common case in one coroutine: an async handler with no breaker or retry topic that succeeds.
        Anything else (undecodable bytes, a failure, a key the store has seen before) continues down the full
        path in ``_process``, a failure counted as the first attempt.

        After a success the task goes on with the next ready message of its partition: creating a task per
        message was the largest fixed cost of the async path (the 5 ms handler at 100 keys reached 70-74% of
        its bound). A handler's context variables therefore carry over to the next message of its slot,
        as in any consumer loop; set them with a reset (``with``/``token``) if that matters.

        With an idempotency store, a record keyed by its own coordinates (no ``key=``, no ``idempotency-key``
        header, not a replay: such keys are unique, so the worker-wide one-delivery-per-key wait of the full
        path has nothing to wait for) is claimed and completed with the calls of this loop tick (StoreBatcher)
        and runs under a shared slot of the solo gate; a key delivered before, DONE keys aside, is a suspect
        and goes the full path. A failure undoes the claim first (released, counter back to 0: a failure that
        returned is not a crash), so the full path counts it as a fresh delivery."""
        try:
            await self._run_fast(st, key, m)
        except Exception:  # a bug in streamguard itself, or the store down: never commit past the message
            log.exception("internal error on the fast path of %s[%d]; the partition will not commit past it",
                          st.topic, st.partition)
            self.stats["internal_errors"] += 1

    async def _run_fast(self, st: PartitionState, key: Any, m: Any) -> None:
        spec = st.spec
        store = self._store
        gate = self._gate
        while True:
            try:
                model = spec.decoder(m.value())
            except DecodeError:
                await self._process(st, key, m)
                return
            ctx: Any = None
            idem: str | None = None
            if store is not None or spec.takes_ctx:
                offset = m.offset()
                coordinates = f"{st.topic}/{st.partition}/{offset}"
                headers = m.headers()
                if spec.takes_ctx or headers or spec.key is not None:
                    ctx = Context(st.topic, st.partition, offset, m.key(), headers, m.timestamp()[1], 1, coordinates,
                                  self.worker_id, self.app.idempotency if store is not None else None)
                    try:
                        ctx.idempotency_key = self._idempotency_key(spec, model, ctx)
                    except Exception:
                        await self._process(st, key, m)  # quarantined there
                        return
                    if store is not None and (ctx.idempotency_key != coordinates
                                              or ctx.header("streamguard.replayed-from") is not None):
                        await self._process(st, key, m)
                        return
                if store is not None:
                    idem = coordinates
                    claim = await store.claim_unless_suspect(idem)
                    if claim is None or claim.status is ClaimStatus.BUSY:  # a suspect, or held elsewhere
                        await self._process(st, key, m)
                        return
                    if claim.status is ClaimStatus.DONE:
                        self.stats["duplicate_skipped"] += 1
                        self._count("duplicate_skipped", st.topic)
                        following = self._resolve(st, key, offset, take_one=True)
                        if following is None:
                            return
                        key, m = following
                        continue
                    if st.revoked:  # never ran: give the claim back as fresh
                        await self._release_key(idem, keep_count=False)
                        self.stats["fenced"] += 1
                        return
                    assert gate is not None
                    if not gate.try_shared():
                        await gate.shared()
                    self._held[idem] = self._held.get(idem, 0) + 1
                    self._ensure_renewer()
            failure: Exception | None = None
            started = time.monotonic()
            try:
                await self._invoke(spec, spec.fn, model, ctx)
            except Exception as exc:
                failure = exc
            finally:
                self._observe_duration(st.topic, time.monotonic() - started)
                if idem is not None:
                    assert gate is not None
                    gate.release_shared()
                    self._drop_held(idem)
            if failure is not None:
                if idem is not None:
                    if isinstance(failure, LeaseLost):  # another owner took the key over and finished it
                        self.stats["duplicate_skipped"] += 1
                        self._count("duplicate_skipped", st.topic)
                        self._resolve(st, key, m.offset())
                        return
                    await self._release_key(idem, keep_count=False)
                await self._process(st, key, m, failure)
                return
            if idem is not None and not (ctx is not None and ctx.transaction_used):
                await store.complete(idem)  # type: ignore[union-attr]
            self.stats["ok"] += 1
            self._count("ok", st.topic)
            following = self._resolve(st, key, m.offset(), take_one=True)
            if following is None:
                return
            key, m = following

    def _drop_held(self, key: str) -> None:
        """A run holding the claim of ``key`` ended: the renewer stops renewing it unless another run holds it."""
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

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
            self._drop_held(ctx.idempotency_key)
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
