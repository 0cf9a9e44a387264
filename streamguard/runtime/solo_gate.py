"""Run a suspect message alone, so a crash can be blamed on exactly one message.

A message whose durable delivery counter shows it was in flight when the worker died before is a
*suspect*. If suspects ran next to other messages, every crash would bump the counters of innocent
bystanders and quarantine them too. The gate is a reader/writer lock with writer preference: normal
messages share it; a suspect waits for everything else to finish and holds it exclusively.
"""

from __future__ import annotations

import asyncio


class SoloGate:
    """asyncio reader/writer lock: many normal runs, or one suspect run, never both."""

    __slots__ = ("_cond", "_readers", "_waiting_writers", "_writer")

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    def try_shared(self) -> bool:
        """Fast path without awaiting: take a shared slot if no suspect runs or waits."""
        if self._writer or self._waiting_writers:
            return False
        self._readers += 1
        return True

    async def shared(self) -> None:
        if self.try_shared():
            return
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and not self._waiting_writers)
            self._readers += 1

    def release_shared(self) -> None:
        """Give a shared slot back; wakes a waiting suspect when the last normal run ends."""
        self._readers -= 1
        if self._readers == 0 and self._waiting_writers:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def exclusive(self) -> None:
        async with self._cond:
            self._waiting_writers += 1
            try:
                await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            finally:
                self._waiting_writers -= 1
            self._writer = True

    async def release_exclusive(self) -> None:
        async with self._cond:
            self._writer = False
            self._cond.notify_all()
