"""Coalesce idempotency-store calls made in the same event-loop tick into one ``*_many`` round trip.

Per-message claims and completions would make the store dominate throughput (an SQLite transaction each);
batching them keeps the store's cost per message small without delaying any single message by more
than one store round trip.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from streamguard.core.idempotency import ClaimOutcome, IdempotencyStore


class StoreBatcher:
    """Async front of a blocking store, batching per loop tick; runs store calls on ``executor``."""

    def __init__(self, store: IdempotencyStore, executor: Executor, owner: str, lease_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease_seconds
        self._executor = executor
        self._claims: list[tuple[str, asyncio.Future[ClaimOutcome]]] = []
        self._completes: list[tuple[str, asyncio.Future[bool]]] = []

    async def claim(self, key: str) -> ClaimOutcome:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ClaimOutcome] = loop.create_future()
        if not self._claims:
            loop.call_soon(self._flush_claims, loop)
        self._claims.append((key, fut))
        return await fut

    async def complete(self, key: str) -> bool:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        if not self._completes:
            loop.call_soon(self._flush_completes, loop)
        self._completes.append((key, fut))
        return await fut

    async def call(self, method: str, *args: Any) -> Any:
        """Run any other store method off the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, getattr(self.store, method), *args)

    def _flush_claims(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._claims = self._claims, []
        keys = [k for k, _ in batch]
        done = loop.run_in_executor(self._executor, self.store.claim_many, keys, self.owner, self.lease)
        done.add_done_callback(lambda f: _settle(f, batch))

    def _flush_completes(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._completes = self._completes, []
        keys = [k for k, _ in batch]
        done = loop.run_in_executor(self._executor, self.store.complete_many, keys, self.owner)
        done.add_done_callback(lambda f: _settle(f, batch))


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
