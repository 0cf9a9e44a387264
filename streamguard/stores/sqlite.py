"""SQLite idempotency store: the embedded default, shared by the worker processes of one host.

Connections, and why:

* Bookkeeping (claim / complete / release ...) goes through **one connection guarded by a lock**. SQLite
  admits one writer per file anyway, so a connection per thread would add no write throughput; it would
  only turn in-process contention into SQLITE_BUSY waits, which SQLite resolves by *sleeping* (1..100 ms
  steps), while a Python lock hands over at once. Batches (``claim_many`` / ``complete_many``) are one
  ``BEGIN IMMEDIATE`` transaction each, which is what keeps the store off the throughput critical path.
* The common batch -- every key fresh to claim, or every key ours to complete -- is first tried as ONE
  single-step statement (the row count tells whether it applied to all) on a **connection per thread**:
  each step into SQLite gives up the GIL, and getting it back from a thread running Python can take the
  interpreter's switch interval (5 ms), so BEGIN / a check / INSERT ... RETURNING (a step per row) / COMMIT
  cost ~100x more than the work beside a busy loop thread. Only the other batches take the transaction.
* The claimed lane's range rows (``claim_span`` / ``settle_chunk``) are written the same way, one autocommit
  statement each on the thread's connection: SQLite's write lock is then held only while the statement runs
  (without the GIL), whereas the bookkeeping lock would be held until the statement's thread gets the GIL back.
* ``transaction()`` takes a **separate connection** from a small free list, because user code runs inside
  it for as long as it likes and must not hold the bookkeeping lock meanwhile. It starts with
  ``BEGIN IMMEDIATE`` (the write lock is taken up front, so a read-then-write cannot fail with
  SQLITE_BUSY_SNAPSHOT halfway). While it is open, other writers -- in this process or others -- wait up to
  ``busy_timeout``; keep those transactions short and do not call the store from inside one.

Other processes (a restarted worker) open the same file; WAL lets them read while one writes, and the
delivery counter is committed before the handler runs, so a new process sees every crash.
``synchronous=NORMAL`` in WAL mode survives process crashes (SIGKILL) but may lose the last commits on
power loss; that trade is the usual one for WAL and is what makes per-batch commits cheap.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import orjson

from streamguard.core.idempotency import (
    ClaimOutcome,
    ClaimStatus,
    KeyRecord,
    RecordStatus,
    transition_claim,
    transition_complete,
    transition_release,
    transition_renew,
    unique_keys,
)
from streamguard.errors import LeaseLost, StreamguardError
from streamguard.stores import sqlite_ranges as ranges

__all__ = ["SqliteStore"]

TABLE = "streamguard_idempotency"
_COLUMNS = "key, status, owner, lease_expires, deliveries, completed_at, updated_at"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    owner TEXT,
    lease_expires REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    completed_at REAL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {TABLE}_done_idx ON {TABLE} (completed_at) WHERE status = 'done';
"""
_UPSERT = (
    f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
    "status = excluded.status, owner = excluded.owner, lease_expires = excluded.lease_expires, "
    "deliveries = excluded.deliveries, completed_at = excluded.completed_at, updated_at = excluded.updated_at"
)
_CHUNK = 500  # keys per SELECT ... IN (...), well under SQLite's bound-variable limit
# Set-at-a-time fast paths: the batch travels as one JSON array (json_each), so SQLite loops in C. Only the
# keys these statements do not settle (rows that already existed / were not ours) take the general path
# through the pure transitions in core.idempotency, which stay the single definition of the rules.
_CLAIM_FRESH = (
    f"INSERT INTO {TABLE} ({_COLUMNS}) SELECT value, 'claimed', ?, ?, 1, NULL, ? FROM json_each(?) WHERE true "
    "ON CONFLICT(key) DO NOTHING RETURNING key"
)  # = transition_claim(None, ...): a key never seen is ACQUIRED with deliveries 1
_CLAIM_ALL_FRESH = (
    f"INSERT INTO {TABLE} ({_COLUMNS}) SELECT value, 'claimed', ?1, ?2, 1, NULL, ?3 FROM json_each(?4) "
    f"WHERE NOT EXISTS (SELECT 1 FROM {ranges.RANGES}) "
    f"AND NOT EXISTS (SELECT 1 FROM {TABLE} WHERE key IN (SELECT value FROM json_each(?4)))"
)  # the same for a batch of keys none of which was ever seen, or nothing (no range row may cover them either)
_COMPLETE_ALL_OWN = (
    f"UPDATE {TABLE} SET status = 'done', lease_expires = NULL, completed_at = ?, updated_at = ? "
    "WHERE key IN (SELECT value FROM json_each(?)) AND status = 'claimed' AND owner = ?"
)  # = transition_complete(own claim, ...): DONE, counter kept; the row count says whether it was all of them
_COMPLETE_OWN = _COMPLETE_ALL_OWN + " RETURNING key"  # the same, naming the keys it completed


_ACQUIRED_FRESH = ClaimOutcome(ClaimStatus.ACQUIRED, 1)  # frozen: one object for every fresh key


def _records(rows: Iterable[tuple[Any, ...]]) -> dict[str, KeyRecord]:
    """Rows of ``SELECT {_COLUMNS}`` -> records by key."""
    return {key: KeyRecord(RecordStatus(status), owner, expires, deliveries, completed, updated)
            for key, status, owner, expires, deliveries, completed, updated in rows}


def _row(key: str, rec: KeyRecord) -> tuple[object, ...]:
    return (key, rec.status.value, rec.owner, rec.lease_expires, rec.deliveries, rec.completed_at, rec.updated_at)


class SqliteStore:
    """Idempotency store in one SQLite file (WAL); thread-safe and shareable between processes."""

    supports_transactions = True

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._txn_lock = threading.Lock()
        self._txn_idle: list[sqlite3.Connection] = []
        self._local = threading.local()  # .conn: the thread's connection for one-statement writes
        self._statement_conns: list[sqlite3.Connection] = []  # every such connection, closed by close()

    def __enter__(self) -> SqliteStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ---------------------------------------------------------------------------------

    def _connect(self, *, set_wal: bool = True) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves instead of the module's
        # implicit deferred transactions.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        if set_wal:  # persistent in the file: connections opened after the first one (open()) need not ask again
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
                if exists.fetchone() is None:  # a read, so opening never waits behind another process's writer
                    # Statement by statement: executescript() would COMMIT the BEGIN IMMEDIATE first.
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("COMMIT")
                exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                      (ranges.RANGES,))
                if exists.fetchone() is None:  # new files, and files written before ranges existed
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in ranges.SCHEMA:
                        conn.execute(statement)
                    conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._txn_lock:
            idle, self._txn_idle = self._txn_idle, []
            idle += self._statement_conns
            self._statement_conns, self._local = [], threading.local()
        for conn in idle:
            conn.close()

    def _statement_conn(self) -> sqlite3.Connection:
        """The calling thread's connection for one-statement writes (the claimed lane's range rows).

        Such a statement is its own transaction: SQLite's write lock is held only while it runs, with the GIL
        released, so lanes on other threads rarely wait for it. Through the shared connection they would wait
        for its Python lock instead, which is held until the statement's thread gets the GIL back: up to the
        interpreter's switch interval (5 ms) per statement while other threads run Python.
        """
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self._require()
            conn = self._connect(set_wal=False)
            with self._txn_lock:
                self._statement_conns.append(conn)
            self._local.conn = conn
        return conn

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StreamguardError(f"SqliteStore({str(self.path)!r}) is not open; call open() first")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction on the bookkeeping connection, under the lock."""
        with self._lock:
            conn = self._require()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _read(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, KeyRecord]:
        found: dict[str, KeyRecord] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(_records(conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE key IN ({marks})", chunk)))
        return found

    # -- the protocol --------------------------------------------------------------------------------

    def claim(self, key: str, owner: str, lease_seconds: float) -> ClaimOutcome:
        return self.claim_many([key], owner, lease_seconds)[0]

    def claim_many(self, keys: Sequence[str], owner: str, lease_seconds: float) -> list[ClaimOutcome]:
        uniq = unique_keys(keys)
        if self._claim_all_fresh(uniq, owner, lease_seconds):
            return [_ACQUIRED_FRESH] * len(keys)
        with self._write() as conn:
            ranges.expand(conn, TABLE, uniq)
            results = self._claim(conn, uniq, owner, lease_seconds)
        return [results[k] for k in keys]

    def _claim_all_fresh(self, keys: list[str], owner: str, lease_seconds: float) -> bool:
        """Claim ``keys`` if none was ever seen (the common case, e.g. the async fast path's batches) in ONE
        single-step autocommit statement on this thread's connection; False (nothing written) otherwise.

        Each step into SQLite gives up the GIL, and getting it back from a thread running Python takes up to
        the interpreter's switch interval (5 ms): with BEGIN, a range check, the insert, COMMIT and a
        RETURNING row per key, those waits, not SQLite's work, made the store's latency (~1 ms per key here).
        """
        now = self._clock()
        cur = self._statement_conn().execute(_CLAIM_ALL_FRESH, (owner, now + lease_seconds, now,
                                                                orjson.dumps(keys).decode()))
        return cur.rowcount == len(keys)

    def _claim(self, conn: sqlite3.Connection, uniq: list[str], owner: str,
               lease_seconds: float) -> dict[str, ClaimOutcome]:
        now = self._clock()
        fresh = self._claim_fresh(conn, uniq, owner, now, lease_seconds)
        results = dict.fromkeys(fresh, ClaimOutcome(ClaimStatus.ACQUIRED, 1))
        rest = [k for k in uniq if k not in results]
        if rest:
            current = self._read(conn, rest)
            writes = []
            for key in rest:
                new, results[key] = transition_claim(current.get(key), owner, now, lease_seconds)
                if new is not None:
                    writes.append(_row(key, new))
            conn.executemany(_UPSERT, writes)
        return results

    @staticmethod
    def _claim_fresh(conn: sqlite3.Connection, keys: list[str], owner: str, now: float,
                     lease_seconds: float) -> set[str]:
        rows = conn.execute(_CLAIM_FRESH, (owner, now + lease_seconds, now, orjson.dumps(keys).decode()))
        return {row[0] for row in rows}

    def claim_unless_suspect_many(self, keys: Sequence[str], owner: str,
                                  lease_seconds: float) -> list[ClaimOutcome | None]:
        """One transaction: keys never seen are claimed, DONE keys come back DONE, keys delivered before
        without resolving (suspects) come back None untouched; see StoreBatcher.claim_unless_suspect."""
        uniq = unique_keys(keys)
        if self._claim_all_fresh(uniq, owner, lease_seconds):
            return [_ACQUIRED_FRESH] * len(keys)
        out: dict[str, ClaimOutcome | None] = {}
        with self._write() as conn:
            ranges.expand(conn, TABLE, uniq)
            now = self._clock()
            for key in self._claim_fresh(conn, uniq, owner, now, lease_seconds):
                out[key] = _ACQUIRED_FRESH
            rest = [k for k in uniq if k not in out]
            if rest:
                current = self._read(conn, rest)
                claimable = []
                for key in rest:
                    rec = current.get(key)
                    if rec is not None and rec.status is RecordStatus.DONE:
                        out[key] = ClaimOutcome(ClaimStatus.DONE, rec.deliveries)
                    elif rec is None or rec.deliveries == 0:
                        claimable.append(key)
                    else:
                        out[key] = None
                if claimable:
                    out.update(self._claim(conn, claimable, owner, lease_seconds))
        return [out[k] for k in keys]

    def claim_span(self, topic: str, partition: int, first: int, last: int, owner: str, lease_seconds: float) -> bool:
        """Claim the keys ``topic/partition/<first..last>`` as ONE range row if none of them has been seen (the
        claimed lane's common case: one statement, its own transaction); False when one has:
        :meth:`claim_chunk` sorts such chunks out."""
        now = self._clock()
        return ranges.claim_if_untouched(self._statement_conn(), TABLE, topic, partition, first, last, owner,
                                         now + lease_seconds, now)

    def claim_chunk(self, topic: str, partition: int, offsets: Sequence[int], owner: str,
                    lease_seconds: float) -> tuple[list[ClaimOutcome | None], set[str]]:
        """:meth:`claim_unless_suspect_many` for the keys ``topic/partition/offset`` of ``offsets`` (increasing,
        dense: see sqlite_ranges), the never-seen ones claimed as ONE range row ``[offsets[0], offsets[-1]]``.

        Returns the outcomes and the keys claimed with rows of their own (released before with their counter
        at 0): :meth:`settle_chunk` leaves those to the per-key calls.
        """
        fresh = _ACQUIRED_FRESH
        if self.claim_span(topic, partition, offsets[0], offsets[-1], owner, lease_seconds):
            return [fresh] * len(offsets), set()
        with self._write() as conn:
            now = self._clock()
            ranges.expand_overlapping(conn, TABLE, topic, partition, offsets[0], offsets[-1])
            current = self._read_span(conn, topic, partition, offsets[0], offsets[-1])
            if not current:  # the common case: no key of the chunk has a row of its own
                out: list[ClaimOutcome | None] = [fresh] * len(offsets)
                claimable: list[str] = []
            else:
                keys = [f"{topic}/{partition}/{o}" for o in offsets]
                claimable = [k for k in keys if (rec := current.get(k)) is not None
                             and rec.status is not RecordStatus.DONE and rec.deliveries == 0]
                claimed = self._claim(conn, claimable, owner, lease_seconds) if claimable else {}
                out = []
                for key in keys:
                    rec = current.get(key)
                    if rec is None:
                        out.append(fresh)
                    elif rec.status is RecordStatus.DONE:
                        out.append(ClaimOutcome(ClaimStatus.DONE, rec.deliveries))
                    else:
                        out.append(claimed.get(key))  # None: a suspect (delivered before, unresolved)
            ranges.insert_claim(conn, topic, partition, offsets[0], offsets[-1], owner, now + lease_seconds, now)
        return out, set(claimable)

    @staticmethod
    def _read_span(conn: sqlite3.Connection, topic: str, partition: int, lo: int, hi: int) -> dict[str, KeyRecord]:
        """The rows of keys ``topic/partition/<offset>`` for offsets in ``[lo, hi]`` (and possibly a few other keys
        of that partition: callers look up the keys they want), one index range scan per decimal length."""
        found: dict[str, KeyRecord] = {}
        for first, last, length in ranges.key_spans(topic, partition, lo, hi):
            found.update(_records(conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE key BETWEEN ? AND ? "
                                               "AND length(key) = ?", (first, last, length))))
        return found

    def settle_chunk(self, topic: str, partition: int, first: int, owner: str, done_through: int | None) -> bool:
        """Our range claimed at ``first`` becomes DONE through ``done_through`` (None: nothing finished); False
        when a per-key call expanded it meanwhile, and the chunk must be settled key by key."""
        return ranges.settle(self._statement_conn(), topic, partition, first, owner, done_through, self._clock())

    def complete(self, key: str, owner: str) -> bool:
        return self.complete_many([key], owner)[0]

    def complete_many(self, keys: Sequence[str], owner: str) -> list[bool]:
        uniq = unique_keys(keys)
        now = self._clock()  # the common case in ONE single-step statement (see _claim_all_fresh): all our claims
        cur = self._statement_conn().execute(_COMPLETE_ALL_OWN, (now, now, orjson.dumps(uniq).decode(), owner))
        if cur.rowcount == len(uniq):
            return [True] * len(keys)
        with self._write() as conn:  # the rest (completing a key we completed just now again is True)
            ranges.expand(conn, TABLE, uniq)
            now = self._clock()
            rows = conn.execute(_COMPLETE_OWN, (now, now, orjson.dumps(uniq).decode(), owner))
            results = dict.fromkeys((row[0] for row in rows), True)
            rest = [k for k in uniq if k not in results]
            if rest:
                current = self._read(conn, rest)
                writes = []
                for key in rest:
                    new, results[key] = transition_complete(current.get(key), owner, now)
                    if new is not None:
                        writes.append(_row(key, new))
                conn.executemany(_UPSERT, writes)
        return [results[k] for k in keys]

    def release(self, key: str, owner: str) -> None:
        with self._write() as conn:
            ranges.expand(conn, TABLE, [key])
            new = transition_release(self._read(conn, [key]).get(key), owner, self._clock())
            if new is not None:
                conn.execute(_UPSERT, _row(key, new))

    def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        with self._write() as conn:
            ranges.expand(conn, TABLE, [key])
            new = transition_renew(self._read(conn, [key]).get(key), owner, self._clock(), lease_seconds)
            if new is not None:
                conn.execute(_UPSERT, _row(key, new))
            return new is not None

    def deliveries(self, key: str) -> int:
        return self.peek_many([key])[0][1]

    def peek_many(self, keys: Sequence[str]) -> list[tuple[bool, int]]:
        found: dict[str, tuple[bool, int]] = {}
        with self._lock:
            conn = self._require()
            for i in range(0, len(keys), 500):
                chunk = list(keys[i:i + 500])
                marks = ",".join("?" * len(chunk))
                for key, status, deliveries in conn.execute(
                        f"SELECT key, status, deliveries FROM {TABLE} WHERE key IN ({marks})", chunk):
                    found[key] = (status == "done", int(deliveries))
            for key, status in ranges.covering(conn, [k for k in keys if k not in found]).items():
                found[key] = (status == "done", 1)
        return [found.get(k, (False, 0)) for k in keys]

    def reset_deliveries(self, key: str) -> None:
        with self._write() as conn:
            ranges.expand(conn, TABLE, [key])
            conn.execute(f"UPDATE {TABLE} SET deliveries = 0, updated_at = ? WHERE key = ?", (self._clock(), key))

    def cleanup(self, older_than_seconds: float) -> int:
        with self._write() as conn:
            cutoff = self._clock() - older_than_seconds
            cur = conn.execute(f"DELETE FROM {TABLE} WHERE status = 'done' AND completed_at < ?", (cutoff,))
            return cur.rowcount + ranges.cleanup(conn, cutoff)

    def transaction(self, key: str, owner: str) -> AbstractContextManager[sqlite3.Connection]:
        """Yield a connection inside BEGIN IMMEDIATE; on exit mark ``key`` DONE and COMMIT both, or roll back.

        Raises LeaseLost (after rolling back) when another owner holds a live claim or completed the key.
        Do not call ``commit()``/``rollback()`` on the yielded connection: that would split effect and mark.
        """
        self._require()
        return self._transaction(key, owner)

    @contextmanager
    def _transaction(self, key: str, owner: str) -> Iterator[sqlite3.Connection]:
        conn = self._take_txn_conn()
        ok = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                ranges.expand(conn, TABLE, [key])  # inside the user's transaction: kept or rolled back with it
                yield conn
                new, marked = transition_complete(self._read(conn, [key]).get(key), owner, self._clock())
                if not marked:
                    raise LeaseLost(key, owner)
                if new is not None:
                    conn.execute(_UPSERT, _row(key, new))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            ok = True
        finally:
            self._give_txn_conn(conn, reusable=ok or not conn.in_transaction)

    def _take_txn_conn(self) -> sqlite3.Connection:
        with self._txn_lock:
            if self._txn_idle:
                return self._txn_idle.pop()
        return self._connect()

    def _give_txn_conn(self, conn: sqlite3.Connection, *, reusable: bool) -> None:
        with self._txn_lock:
            if reusable and self._conn is not None:
                self._txn_idle.append(conn)
                return
        conn.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"
