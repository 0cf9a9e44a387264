"""What a handler knows about the message it is handling (``ctx``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from streamguard.errors import ConfigError

if TYPE_CHECKING:
    from streamguard.core.idempotency import IdempotencyStore

_log = logging.getLogger("streamguard.handler")


class Context:
    """Coordinates, headers and attempt of one message, a bound logger, and the inbox transaction."""

    __slots__ = (
        "_logger",
        "_store",
        "attempt",
        "headers",
        "idempotency_key",
        "key",
        "offset",
        "origin",
        "partition",
        "timestamp",
        "topic",
        "transaction_used",
        "worker_id",
    )

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None,
                 headers: list[tuple[str, bytes]] | None, timestamp: int | None, attempt: int,
                 idempotency_key: str, worker_id: str, store: IdempotencyStore | None) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.headers = headers or []
        self.timestamp = timestamp
        self.attempt = attempt
        self.idempotency_key = idempotency_key
        self.worker_id = worker_id
        self._store = store
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        # for a message read from a retry topic: (topic, partition, offset, timestamp_ms, attempts so far,
        # first failure in epoch seconds) of the original record
        self.origin: tuple[str, int, int, int | None, int, float | None] | None = None
        self.transaction_used = False

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        for k, v in reversed(self.headers):
            if k == name:
                return v
        return None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry topic/partition/offset/key/attempt (never the value)."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(_log, {
                "topic": self.topic, "partition": self.partition, "offset": self.offset,
                "key": self.key.decode("utf-8", "replace") if self.key else None, "attempt": self.attempt,
                "idempotency_key": self.idempotency_key, "worker": self.worker_id})
        return self._logger

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Run your writes and the idempotency completion mark in ONE database transaction.

        Only this makes a side effect happen exactly once under SIGKILL, and only when the effect lives
        in the same database as the store (SQLite file or PostgreSQL database).
        """
        store = self._store
        if store is None or not getattr(store, "supports_transactions", False):
            raise ConfigError("ctx.transaction() needs an SQL idempotency store (SqliteStore or PostgresStore) "
                              "on the App")
        with store.transaction(self.idempotency_key, self.worker_id) as conn:
            yield conn
        self.transaction_used = True

    def __repr__(self) -> str:
        return f"<Context {self.topic}[{self.partition}]@{self.offset} attempt={self.attempt}>"
