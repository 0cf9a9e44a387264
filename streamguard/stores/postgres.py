"""PostgreSQL idempotency store: shared by workers on many hosts.

Every state change is one conditional ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``
statement, so the decision (DONE / BUSY / ACQUIRED, fenced or not) is taken under the row lock inside the
database and two hosts can never both acquire a live claim. ``claim_many`` / ``complete_many`` send all their
keys in one statement (``unnest`` of an array, inserted in key order so concurrent batches lock rows in the
same order and cannot deadlock); a statement is its own transaction, so a batch is one round trip and one
transaction. Keys the upsert did not acquire are then looked up to tell DONE from BUSY: the outcome is the
state as of the upsert (a BUSY claim released a moment later is still reported BUSY -- the caller retries).

Time: all timestamps come from the injected ``clock`` (default ``time.time``), never from ``now()`` in SQL,
so tests move time without sleeping and the rules match the other stores. Hosts must therefore keep their
clocks in sync (NTP), and ``lease_seconds`` must be well above the worst clock skew.

psycopg 3 is imported lazily: ``pip install streamguard[postgres]`` is needed only to use this store.
Connections come from a small built-in pool (autocommit; ``transaction()`` opens an explicit transaction).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from streamguard.core.idempotency import ClaimOutcome, ClaimStatus, unique_keys
from streamguard.errors import ConfigError, LeaseLost, StreamguardError

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["PostgresStore"]

_TABLE_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,54}$")
_POOL_WAIT_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {t} (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    owner TEXT,
    lease_expires DOUBLE PRECISION,
    deliveries INTEGER NOT NULL DEFAULT 0,
    completed_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS {idx} ON {t} (completed_at) WHERE status = 'done'"

# Mirrors core.idempotency.transition_claim: acquire unless DONE or another owner's lease is live.
_CLAIM = """
INSERT INTO {t} AS t (key, status, owner, lease_expires, deliveries, completed_at, updated_at)
SELECT k, 'claimed', %(owner)s::text, %(expires)s::float8, 1, NULL::float8, %(now)s::float8
FROM unnest(%(keys)s::text[]) AS u(k) ORDER BY k
ON CONFLICT (key) DO UPDATE
SET status = 'claimed', owner = EXCLUDED.owner, lease_expires = EXCLUDED.lease_expires,
    deliveries = t.deliveries + 1, updated_at = EXCLUDED.updated_at
WHERE t.status <> 'done'
  AND (t.status <> 'claimed' OR t.owner = EXCLUDED.owner OR t.lease_expires <= EXCLUDED.updated_at)
RETURNING t.key, t.deliveries
"""

# Mirrors transition_complete: fenced when another owner holds a live lease or completed the key first.
_COMPLETE = """
INSERT INTO {t} AS t (key, status, owner, lease_expires, deliveries, completed_at, updated_at)
SELECT k, 'done', %(owner)s::text, NULL::float8, 0, %(now)s::float8, %(now)s::float8
FROM unnest(%(keys)s::text[]) AS u(k) ORDER BY k
ON CONFLICT (key) DO UPDATE
SET status = 'done', owner = EXCLUDED.owner, lease_expires = NULL,
    completed_at = CASE WHEN t.status = 'done' THEN t.completed_at ELSE EXCLUDED.completed_at END,
    updated_at = EXCLUDED.updated_at
WHERE CASE WHEN t.status = 'done' THEN t.owner = EXCLUDED.owner
           WHEN t.status = 'claimed' THEN t.owner = EXCLUDED.owner OR t.lease_expires <= EXCLUDED.updated_at
           ELSE TRUE END
RETURNING t.key
"""

_STATUS_OF = "SELECT key, status, deliveries FROM {t} WHERE key = ANY(%(keys)s::text[])"
_RELEASE = """
UPDATE {t} SET status = 'released', owner = NULL, lease_expires = NULL, updated_at = %(now)s
WHERE key = %(key)s AND status = 'claimed' AND owner = %(owner)s
"""
_RENEW = """
UPDATE {t} SET lease_expires = %(expires)s, updated_at = %(now)s
WHERE key = %(key)s AND status = 'claimed' AND owner = %(owner)s
RETURNING 1
"""
_DELIVERIES = "SELECT deliveries FROM {t} WHERE key = %(key)s"
_PEEK = "SELECT key, status, deliveries FROM {t} WHERE key = ANY(%(keys)s)"
_RESET = "UPDATE {t} SET deliveries = 0, updated_at = %(now)s WHERE key = %(key)s"
_CLEANUP = "DELETE FROM {t} WHERE status = 'done' AND completed_at < %(cutoff)s"


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("PostgresStore needs psycopg 3: pip install 'streamguard[postgres]'") from exc
    return psycopg


class _Pool:
    """At most ``size`` autocommit connections, made on demand; broken ones are dropped, not reused."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], size: int) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=_POOL_WAIT_SECONDS):
            raise StreamguardError(f"no PostgreSQL connection free after {_POOL_WAIT_SECONDS:.0f}s (pool exhausted)")
        try:
            with self._lock:
                if self._closed:
                    raise StreamguardError("PostgresStore is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                self._put(conn)
        finally:
            self._slots.release()

    def _put(self, conn: psycopg.Connection[Any]) -> None:
        from psycopg.pq import TransactionStatus

        healthy = not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PostgresStore:
    """Idempotency store in one PostgreSQL table; safe for many workers on many hosts."""

    supports_transactions = True

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "streamguard_idempotency",
        clock: Callable[[], float] = time.time,
        pool_size: int = 4,
    ) -> None:
        if not _TABLE_NAME.match(table):
            raise ConfigError(f"invalid table name {table!r}: use [schema.]name with letters, digits and _")
        if pool_size < 1:
            raise ConfigError(f"pool_size must be >= 1, got {pool_size}")
        self.dsn = dsn
        self.table = table
        self._clock = clock
        self._pool_size = pool_size
        self._pool: _Pool | None = None
        self._sql: dict[str, sql.Composed] = {}

    def __enter__(self) -> PostgresStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self._pool is not None:
            return
        pg = _import_psycopg()
        from psycopg import sql

        parts = self.table.split(".")
        ident = sql.Identifier(*parts)
        index = sql.Identifier(f"{parts[-1]}_done_idx")
        templates = {
            "schema": _SCHEMA, "index": _INDEX, "claim": _CLAIM, "complete": _COMPLETE, "status_of": _STATUS_OF,
            "release": _RELEASE, "renew": _RENEW, "deliveries": _DELIVERIES, "peek": _PEEK, "reset": _RESET,
            "cleanup": _CLEANUP,
        }  # fmt: skip
        self._sql = {name: sql.SQL(text).format(t=ident, idx=index) for name, text in templates.items()}

        def connect() -> psycopg.Connection[Any]:
            conn: psycopg.Connection[Any] = pg.connect(self.dsn, autocommit=True)
            return conn

        pool = _Pool(connect, self._pool_size)
        with pool.connection() as conn, conn.transaction():
            # Serialise schema creation: concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.table])
            conn.execute(self._sql["schema"])
            conn.execute(self._sql["index"])
        self._pool = pool

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _conn(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        if self._pool is None:
            raise StreamguardError(f"PostgresStore(table={self.table!r}) is not open; call open() first")
        return self._pool.connection()

    # -- the protocol --------------------------------------------------------------------------------

    def claim(self, key: str, owner: str, lease_seconds: float) -> ClaimOutcome:
        return self.claim_many([key], owner, lease_seconds)[0]

    def claim_many(self, keys: Sequence[str], owner: str, lease_seconds: float) -> list[ClaimOutcome]:
        uniq = unique_keys(keys)
        if not uniq:
            return []
        now = self._clock()
        params = {"keys": uniq, "owner": owner, "expires": now + lease_seconds, "now": now}
        with self._conn() as conn:
            results = {
                key: ClaimOutcome(ClaimStatus.ACQUIRED, deliveries)
                for key, deliveries in conn.execute(self._sql["claim"], params).fetchall()
            }
            rest = [k for k in uniq if k not in results]
            if rest:
                for key, status, deliveries in conn.execute(self._sql["status_of"], {"keys": rest}).fetchall():
                    done = status == "done"
                    results[key] = ClaimOutcome(ClaimStatus.DONE if done else ClaimStatus.BUSY, deliveries)
        for key in rest:
            # Not acquired yet gone: only DONE rows are ever deleted (cleanup ran in between).
            results.setdefault(key, ClaimOutcome(ClaimStatus.DONE, 0))
        return [results[k] for k in keys]

    def complete(self, key: str, owner: str) -> bool:
        return self.complete_many([key], owner)[0]

    def complete_many(self, keys: Sequence[str], owner: str) -> list[bool]:
        uniq = unique_keys(keys)
        if not uniq:
            return []
        with self._conn() as conn:
            rows = conn.execute(self._sql["complete"], {"keys": uniq, "owner": owner, "now": self._clock()})
            marked = {row[0] for row in rows.fetchall()}
        return [k in marked for k in keys]

    def release(self, key: str, owner: str) -> None:
        with self._conn() as conn:
            conn.execute(self._sql["release"], {"key": key, "owner": owner, "now": self._clock()})

    def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        now = self._clock()
        with self._conn() as conn:
            params = {"key": key, "owner": owner, "expires": now + lease_seconds, "now": now}
            return conn.execute(self._sql["renew"], params).fetchone() is not None

    def deliveries(self, key: str) -> int:
        with self._conn() as conn:
            row = conn.execute(self._sql["deliveries"], {"key": key}).fetchone()
        return int(row[0]) if row is not None else 0

    def peek_many(self, keys: Sequence[str]) -> list[tuple[bool, int]]:
        with self._conn() as conn:
            rows = conn.execute(self._sql["peek"], {"keys": list(keys)}).fetchall()
        found = {str(k): (status == "done", int(d)) for k, status, d in rows}
        return [found.get(k, (False, 0)) for k in keys]

    def reset_deliveries(self, key: str) -> None:
        with self._conn() as conn:
            conn.execute(self._sql["reset"], {"key": key, "now": self._clock()})

    def cleanup(self, older_than_seconds: float) -> int:
        with self._conn() as conn:
            return conn.execute(self._sql["cleanup"], {"cutoff": self._clock() - older_than_seconds}).rowcount

    def transaction(self, key: str, owner: str) -> AbstractContextManager[psycopg.Connection[Any]]:
        """Yield a pooled connection inside a transaction; on exit mark ``key`` DONE and COMMIT both.

        The mark is the same conditional upsert as ``complete``, run last inside the user's transaction,
        so it takes the row lock and decides under it: fenced -> LeaseLost and everything rolls back. Do not
        call ``commit()`` on the yielded connection (psycopg refuses inside a transaction block anyway).
        """
        if self._pool is None:
            raise StreamguardError(f"PostgresStore(table={self.table!r}) is not open; call open() first")
        return self._transaction(key, owner)

    @contextmanager
    def _transaction(self, key: str, owner: str) -> Iterator[psycopg.Connection[Any]]:
        with self._conn() as conn, conn.transaction():
            yield conn
            params = {"keys": [key], "owner": owner, "now": self._clock()}
            if conn.execute(self._sql["complete"], params).fetchone() is None:
                raise LeaseLost(key, owner)

    def __repr__(self) -> str:
        return f"PostgresStore(table={self.table!r})"
