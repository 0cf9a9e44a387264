"""Coalesce idempotency-store calls made in the same event-loop tick into one round trip each.

Per-message claims, completions and suspect checks would make the store dominate throughput
(an SQLite transaction or a PostgreSQL round trip each); batching them keeps the store's cost per
message small without delaying any single message by more than one store round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from streamguard.core.idempotency import ClaimOutcome, ClaimStatus, IdempotencyStore


class _Coalescer:
    """Collects keys during one loop tick and runs ``many(keys)`` once on the executor."""

    __slots__ = ("_executor", "_many", "_pending")

    def __init__(self, many: Callable[[Sequence[str]], Sequence[Any]], executor: Executor) -> None:
        self._many = many
        self._executor = executor
        self._pending: list[tuple[str, asyncio.Future[Any]]] = []

    async def submit(self, key: str) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush, loop)
        self._pending.append((key, fut))
        return await fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        done = loop.run_in_executor(self._executor, self._many, [k for k, _ in batch])
        done.add_done_callback(lambda f: _settle(f, batch))


class StoreBatcher:
    """Async front of a blocking store, batching per loop tick; runs store calls on ``executor``."""

    def __init__(self, store: IdempotencyStore, executor: Executor, owner: str, lease_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease_seconds
        self._executor = executor
        self._claims = _Coalescer(lambda keys: store.claim_many(keys, owner, lease_seconds), executor)
        self._completes = _Coalescer(lambda keys: store.complete_many(keys, owner), executor)
        self._checked = _Coalescer(self.claim_unless_suspect_many, executor)

    async def claim(self, key: str) -> ClaimOutcome:
        outcome: ClaimOutcome = await self._claims.submit(key)
        return outcome

    async def complete(self, key: str) -> bool:
        return bool(await self._completes.submit(key))

    async def claim_unless_suspect(self, key: str) -> ClaimOutcome | None:
        """Claim ``key`` in one round trip, unless it was delivered before without resolving (a suspect):
        then return None without bumping its counter, so the caller can take the solo gate first."""
        outcome: ClaimOutcome | None = await self._checked.submit(key)
        return outcome

    def claim_unless_suspect_many(self, keys: Sequence[str]) -> list[ClaimOutcome | None]:
        """(blocking) Done keys come back DONE (nothing to run, no gate needed); keys never delivered are claimed;
        keys delivered before without resolving are suspects (None). A store may do it in one transaction
        (``claim_unless_suspect_many``); otherwise a peek and a claim of the fresh keys."""
        fused = getattr(self.store, "claim_unless_suspect_many", None)
        if fused is not None:
            result: list[ClaimOutcome | None] = fused(keys, self.owner, self.lease)
            return result
        peeked = self.store.peek_many(keys)
        fresh = [k for k, (done, deliveries) in zip(keys, peeked, strict=True) if not done and deliveries == 0]
        claimed = dict(zip(fresh, self.store.claim_many(fresh, self.owner, self.lease), strict=True)) if fresh else {}
        out: list[ClaimOutcome | None] = []
        for key, (done, deliveries) in zip(keys, peeked, strict=True):
            out.append(ClaimOutcome(ClaimStatus.DONE, deliveries) if done else claimed.get(key))
        return out

    async def call_with(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (blocking store work) off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def call(self, method: str, *args: Any) -> Any:
        """Run any other store method off the loop."""
        return await self.call_with(getattr(self.store, method), *args)

    def release_now(self, key: str, keep_count: bool) -> None:
        """(blocking) Release our claim of ``key``; unless ``keep_count``, zero its delivery counter first."""
        if not keep_count:
            self.store.reset_deliveries(key)
        self.store.release(key, self.owner)


def _settle(result: asyncio.Future[Any], batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
    exc = result.exception()
    values = None if exc else result.result()
    for i, (_, fut) in enumerate(batch):
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(values[i])  # type: ignore[index]
