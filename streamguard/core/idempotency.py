"""Idempotency store protocol, the claim/complete state machine, and an in-memory store.

A store keeps one record per idempotency key. A worker *claims* a key before running the handler (taking a
lease and bumping the durable delivery counter, so a message that kills the worker N times is seen N times),
then *completes* it (DONE: redeliveries are acknowledged without running the handler) or *releases* it
(the handler failed; the retry policy or the DLQ takes over and the counter is kept).

The transition functions below are the single definition of the semantics: ``InMemoryStore`` and
``SqliteStore`` apply them to a record they read under a lock/transaction, and ``PostgresStore`` encodes the
same rules in SQL (checked by the shared contract tests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from streamguard.errors import ConfigError, StreamguardError

__all__ = [
    "ClaimOutcome",
    "ClaimStatus",
    "IdempotencyStore",
    "InMemoryStore",
    "KeyRecord",
    "RecordStatus",
    "transition_claim",
    "transition_complete",
    "transition_release",
    "transition_renew",
    "unique_keys",
]

Clock = Callable[[], float]


class ClaimStatus(StrEnum):
    """What ``claim`` found: the caller runs the handler only on ``ACQUIRED``."""

    ACQUIRED = "acquired"
    DONE = "done"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """Result of one claim; ``deliveries`` is the durable delivery counter *after* this claim."""

    status: ClaimStatus
    deliveries: int


class RecordStatus(StrEnum):
    """Stored state of a key (kept separate from ClaimStatus: BUSY is a view, not a state)."""

    CLAIMED = "claimed"
    RELEASED = "released"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored row; ``owner`` of a DONE record is the owner that completed it."""

    status: RecordStatus
    owner: str | None
    lease_expires: float | None
    deliveries: int
    completed_at: float | None
    updated_at: float


def _held_by_other(rec: KeyRecord, owner: str, now: float) -> bool:
    """A live lease of someone else: the only thing that blocks a claim or fences a completion."""
    return (
        rec.status is RecordStatus.CLAIMED
        and rec.owner != owner
        and rec.lease_expires is not None
        and rec.lease_expires > now
    )


def transition_claim(
    rec: KeyRecord | None, owner: str, now: float, lease_seconds: float
) -> tuple[KeyRecord | None, ClaimOutcome]:
    """Apply a claim; returns the record to write (None = unchanged) and the outcome."""
    if rec is not None and rec.status is RecordStatus.DONE:
        return None, ClaimOutcome(ClaimStatus.DONE, rec.deliveries)
    if rec is not None and _held_by_other(rec, owner, now):
        return None, ClaimOutcome(ClaimStatus.BUSY, rec.deliveries)
    deliveries = (rec.deliveries if rec is not None else 0) + 1
    new = KeyRecord(RecordStatus.CLAIMED, owner, now + lease_seconds, deliveries, None, now)
    return new, ClaimOutcome(ClaimStatus.ACQUIRED, deliveries)


def transition_complete(rec: KeyRecord | None, owner: str, now: float) -> tuple[KeyRecord | None, bool]:
    """Mark DONE unless fenced: False when another owner holds a live lease or already completed the key.

    Completing an unknown key (never claimed, or cleaned up) records it as DONE with a zero counter.
    """
    if rec is None:
        return KeyRecord(RecordStatus.DONE, owner, None, 0, now, now), True
    if rec.status is RecordStatus.DONE:
        return None, rec.owner == owner
    if _held_by_other(rec, owner, now):
        return None, False
    return KeyRecord(RecordStatus.DONE, owner, None, rec.deliveries, now, now), True


def transition_release(rec: KeyRecord | None, owner: str, now: float) -> KeyRecord | None:
    """Give up a claim still held by ``owner`` (live or expired); anything else is left alone."""
    if rec is None or rec.status is not RecordStatus.CLAIMED or rec.owner != owner:
        return None
    return replace(rec, status=RecordStatus.RELEASED, owner=None, lease_expires=None, updated_at=now)


def transition_renew(rec: KeyRecord | None, owner: str, now: float, lease_seconds: float) -> KeyRecord | None:
    """Extend ``owner``'s claim (even if expired, as long as nobody took it); None means renew failed."""
    if rec is None or rec.status is not RecordStatus.CLAIMED or rec.owner != owner:
        return None
    return replace(rec, lease_expires=now + lease_seconds, updated_at=now)


def unique_keys(keys: Sequence[str]) -> list[str]:
    """Keys in first-seen order without repeats: a key repeated in one batch is claimed/completed once."""
    return list(dict.fromkeys(keys))


@runtime_checkable
class IdempotencyStore(Protocol):
    """Durable claims, completions and delivery counters keyed by idempotency key.

    Every implementation must pass ``tests/unit/test_idempotency_store.py``. Batch calls take one round
    trip / one transaction so the store does not dominate throughput; a key repeated in a batch is handled
    once and every occurrence gets that result.
    """

    supports_transactions: bool

    def open(self) -> None:
        """Connect and create the schema; called once at worker startup so misconfiguration fails fast."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...

    def claim(self, key: str, owner: str, lease_seconds: float) -> ClaimOutcome:
        """DONE if completed, BUSY if another owner's lease is live, else ACQUIRED (counter + 1)."""
        ...

    def claim_many(self, keys: Sequence[str], owner: str, lease_seconds: float) -> list[ClaimOutcome]:
        """``claim`` for each key, in one transaction; outcomes in the order of ``keys``."""
        ...

    def complete(self, key: str, owner: str) -> bool:
        """Mark DONE; False when fenced (another owner holds a live lease or completed the key)."""
        ...

    def complete_many(self, keys: Sequence[str], owner: str) -> list[bool]:
        """``complete`` for each key, in one transaction."""
        ...

    def release(self, key: str, owner: str) -> None:
        """Give the claim up after a handler failure; the delivery counter is kept."""
        ...

    def deliveries(self, key: str) -> int:
        """The durable delivery counter (0 for an unknown key)."""
        ...

    def reset_deliveries(self, key: str) -> None:
        """Zero the counter, when a person releases a quarantined message."""
        ...

    def peek_many(self, keys: Sequence[str]) -> list[tuple[bool, int]]:
        """(done?, delivery counter) of each key, read without claiming or bumping anything."""
        ...

    def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        """Extend a long-running handler's lease; False when the claim was lost."""
        ...

    def transaction(self, key: str, owner: str) -> AbstractContextManager[Any]:
        """Inbox pattern: yield the DB connection in a transaction; commit user writes + DONE atomically."""
        ...

    def cleanup(self, older_than_seconds: float) -> int:
        """Delete DONE records completed more than ``older_than_seconds`` ago; returns how many."""
        ...


class InMemoryStore:
    """Process-local store for tests and throwaway runs: nothing survives a restart, so no crash-loop
    detection across processes and no ``transaction()``."""

    supports_transactions = False

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._records: dict[str, KeyRecord] = {}
        self._lock = threading.Lock()
        self._open = False

    def __enter__(self) -> InMemoryStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise StreamguardError("InMemoryStore is not open; call open() first")

    def claim(self, key: str, owner: str, lease_seconds: float) -> ClaimOutcome:
        return self.claim_many([key], owner, lease_seconds)[0]

    def claim_many(self, keys: Sequence[str], owner: str, lease_seconds: float) -> list[ClaimOutcome]:
        with self._lock:
            self._check_open()
            now = self._clock()
            results: dict[str, ClaimOutcome] = {}
            for key in unique_keys(keys):
                new, results[key] = transition_claim(self._records.get(key), owner, now, lease_seconds)
                if new is not None:
                    self._records[key] = new
            return [results[k] for k in keys]

    def complete(self, key: str, owner: str) -> bool:
        return self.complete_many([key], owner)[0]

    def complete_many(self, keys: Sequence[str], owner: str) -> list[bool]:
        with self._lock:
            self._check_open()
            now = self._clock()
            results: dict[str, bool] = {}
            for key in unique_keys(keys):
                new, results[key] = transition_complete(self._records.get(key), owner, now)
                if new is not None:
                    self._records[key] = new
            return [results[k] for k in keys]

    def release(self, key: str, owner: str) -> None:
        with self._lock:
            self._check_open()
            new = transition_release(self._records.get(key), owner, self._clock())
            if new is not None:
                self._records[key] = new

    def deliveries(self, key: str) -> int:
        with self._lock:
            self._check_open()
            rec = self._records.get(key)
            return rec.deliveries if rec is not None else 0

    def peek_many(self, keys: Sequence[str]) -> list[tuple[bool, int]]:
        with self._lock:
            self._check_open()
            out = []
            for key in keys:
                rec = self._records.get(key)
                out.append((rec is not None and rec.status is RecordStatus.DONE, rec.deliveries if rec else 0))
            return out

    def reset_deliveries(self, key: str) -> None:
        with self._lock:
            self._check_open()
            rec = self._records.get(key)
            if rec is not None:
                self._records[key] = replace(rec, deliveries=0, updated_at=self._clock())

    def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        with self._lock:
            self._check_open()
            new = transition_renew(self._records.get(key), owner, self._clock(), lease_seconds)
            if new is None:
                return False
            self._records[key] = new
            return True

    def transaction(self, key: str, owner: str) -> AbstractContextManager[Any]:
        """Not supported: there is no database to hold the user's effect next to the mark."""
        raise ConfigError(
            "InMemoryStore does not support transaction(): the inbox pattern needs the side effect and the "
            "idempotency mark in one database; use SqliteStore or PostgresStore"
        )

    def cleanup(self, older_than_seconds: float) -> int:
        with self._lock:
            self._check_open()
            cutoff = self._clock() - older_than_seconds
            old = [
                k
                for k, r in self._records.items()
                if r.status is RecordStatus.DONE and r.completed_at is not None and r.completed_at < cutoff
            ]
            for k in old:
                del self._records[k]
            return len(old)
