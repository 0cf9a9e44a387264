"""Offset ranges: how SqliteStore keeps the claimed lane's bookkeeping to one row per chunk.

The claimed lane (runtime/claimed_lane.py) claims keys that are a record's own coordinates
(``topic/partition/offset``), a chunk of one partition's offsets at a time, and completes the chunk's prefix
it finished. A row per key costs two B-tree writes per message (~8 us with 200,000 keys here); a row per chunk
costs one read per key (~0.4 us) and two writes per chunk.

A range is only a compressed form of per-key records, and ranges never overlap:

* a key's state is its own row if it has one, else the range covering its offset, else unknown (never seen);
* a range ``[first, last]`` is CLAIMED by the lane's owner (lease and one delivery for every key in it), then
  DONE up to the last offset the lane finished, or deleted when it finished none (the rest is unknown again,
  as a released fresh claim with its counter back to 0 would be);
* any per-key operation first **expands** the ranges that cover its keys into per-key rows (same status,
  owner, lease, one delivery) and deletes them, so the per-key rules of core.idempotency apply unchanged, to
  the same state; a lane claim expands every range overlapping its chunk before it writes its own.

Ranges are only written for dense chunks (``last - first < 2 * len(chunk)``), so an expansion writes a
bounded number of rows whatever the gaps in a compacted partition.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

RANGES = "streamguard_ranges"
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {RANGES} (topic TEXT NOT NULL, part INTEGER NOT NULL, first INTEGER NOT NULL, "
    "last INTEGER NOT NULL, status TEXT NOT NULL, owner TEXT, lease_expires REAL, updated_at REAL NOT NULL, "
    "PRIMARY KEY (topic, part, first)) WITHOUT ROWID",
    f"CREATE INDEX IF NOT EXISTS {RANGES}_done_idx ON {RANGES} (updated_at) WHERE status = 'done'",
)
_COLUMNS = "first, last, status, owner, lease_expires, updated_at"
# ranges never overlap, so the ones overlapping [lo, hi] are those starting inside it plus at most one starting
# before it: two index range scans, however many ranges the partition has
_OVERLAPPING = (f"SELECT {_COLUMNS} FROM {RANGES} WHERE topic = ?1 AND part = ?2 AND first BETWEEN ?3 AND ?4 "
                f"UNION ALL SELECT * FROM (SELECT {_COLUMNS} FROM {RANGES} WHERE topic = ?1 AND part = ?2 "
                "AND first < ?3 ORDER BY first DESC LIMIT 1) WHERE last >= ?3")


def _overlapping(conn: sqlite3.Connection, topic: str, part: int, lo: int, hi: int) -> list[tuple[Any, ...]]:
    return conn.execute(_OVERLAPPING, (topic, part, lo, hi)).fetchall()


def coordinates(key: str) -> tuple[str, int, int] | None:
    """``topic/partition/offset`` -> its parts; None for any other key (topic names cannot contain '/')."""
    parts = key.rsplit("/", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


def is_dense(first: int, last: int, count: int) -> bool:
    """Worth a range: ``count`` increasing offsets from ``first`` to ``last`` span less than twice their count
    (expansions stay bounded)."""
    return count > 0 and last - first < 2 * count


def expand(conn: sqlite3.Connection, table: str, keys: Sequence[str]) -> None:
    """Turn the ranges covering any of ``keys`` into per-key rows (inside the caller's write transaction)."""
    if conn.execute(f"SELECT 1 FROM {RANGES} LIMIT 1").fetchone() is None:
        return  # the common case for the per-message path: no range anywhere
    groups: dict[tuple[str, int], list[int]] = {}
    for key in keys:
        c = coordinates(key)
        if c is not None:
            groups.setdefault((c[0], c[1]), []).append(c[2])
    for (topic, part), offsets in groups.items():
        for row in _overlapping(conn, topic, part, min(offsets), max(offsets)):
            if any(row[0] <= o <= row[1] for o in offsets):
                _expand_range(conn, table, topic, part, row)


def covering(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
    """The status of the range covering each of ``keys`` that has one (read only: for peeks, which must not
    wait behind a writer; every key in a range has one delivery)."""
    found: dict[str, str] = {}
    if not keys or conn.execute(f"SELECT 1 FROM {RANGES} LIMIT 1").fetchone() is None:
        return found
    for key in keys:
        c = coordinates(key)
        if c is not None:
            rows = _overlapping(conn, c[0], c[1], c[2], c[2])
            if rows:
                found[key] = rows[0][2]
    return found


def expand_overlapping(conn: sqlite3.Connection, table: str, topic: str, part: int, lo: int, hi: int) -> None:
    """Turn every range overlapping ``[lo, hi]`` of one partition into per-key rows."""
    for row in _overlapping(conn, topic, part, lo, hi):
        _expand_range(conn, table, topic, part, row)


def _expand_range(conn: sqlite3.Connection, table: str, topic: str, part: int, row: tuple[Any, ...]) -> None:
    first, last, status, owner, lease_expires, updated_at = row
    keys = orjson.dumps([f"{topic}/{part}/{o}" for o in range(first, last + 1)]).decode()
    completed = updated_at if status == "done" else None
    lease = None if status == "done" else lease_expires
    # a key with its own row keeps it (its row is more precise than the range)
    conn.execute(f"INSERT INTO {table} (key, status, owner, lease_expires, deliveries, completed_at, updated_at) "
                 "SELECT value, ?, ?, ?, 1, ?, ? FROM json_each(?) WHERE true ON CONFLICT(key) DO NOTHING",
                 (status, owner, lease, completed, updated_at, keys))
    conn.execute(f"DELETE FROM {RANGES} WHERE topic = ? AND part = ? AND first = ?", (topic, part, first))


def key_spans(topic: str, part: int, lo: int, hi: int) -> list[tuple[str, str, int]]:
    """The keys ``topic/part/<offset in [lo, hi]>`` as (first key, last key, key length) spans, one per decimal
    length: among keys of one length under one prefix, text order is numeric order, so each span is one
    index range scan (``key BETWEEN first AND last AND length(key) = length``) instead of a lookup per key."""
    prefix = f"{topic}/{part}/"
    spans = []
    a = lo
    while a <= hi:
        b = min(hi, 10 ** len(str(a)) - 1)
        first = prefix + str(a)
        spans.append((first, prefix + str(b), len(first)))
        a = b + 1
    return spans


def claim_if_untouched(conn: sqlite3.Connection, table: str, topic: str, part: int, lo: int, hi: int, owner: str,
                       lease_expires: float, now: float) -> bool:
    """The common case in ONE statement (its own transaction): claim ``[lo, hi]`` as a range if no range overlaps
    it and no key ``topic/part/<offset in [lo, hi]>`` has a row."""
    spans = key_spans(topic, part, lo, hi)
    no_rows = " ".join(f"AND NOT EXISTS (SELECT 1 FROM {table} WHERE key BETWEEN ?{8 + 3 * n} AND ?{9 + 3 * n} "
                       f"AND length(key) = ?{10 + 3 * n})" for n in range(len(spans)))
    cur = conn.execute(
        f"INSERT INTO {RANGES} (topic, part, first, last, status, owner, lease_expires, updated_at) "
        "SELECT ?1, ?2, ?3, ?4, 'claimed', ?5, ?6, ?7 "
        f"WHERE NOT EXISTS ({_OVERLAPPING}) {no_rows}",  # the same numbered parameters: ?1 topic .. ?4 hi
        (topic, part, lo, hi, owner, lease_expires, now, *(v for span in spans for v in span)))
    return cur.rowcount == 1


def insert_claim(conn: sqlite3.Connection, topic: str, part: int, first: int, last: int, owner: str,
                 lease_expires: float, now: float) -> None:
    conn.execute(f"INSERT INTO {RANGES} VALUES (?, ?, ?, ?, 'claimed', ?, ?, ?)",
                 (topic, part, first, last, owner, lease_expires, now))


def settle(conn: sqlite3.Connection, topic: str, part: int, first: int, owner: str, done_through: int | None,
           now: float) -> bool:
    """Our CLAIMED range becomes DONE through ``done_through`` (deleted when None); False when it is not there
    any more as ours (a per-key operation expanded it): the caller settles key by key instead."""
    mine = "topic = ? AND part = ? AND first = ? AND status = 'claimed' AND owner = ?"
    if done_through is None:
        cur = conn.execute(f"DELETE FROM {RANGES} WHERE {mine}", (topic, part, first, owner))
    else:
        cur = conn.execute(f"UPDATE {RANGES} SET status = 'done', last = ?, lease_expires = NULL, updated_at = ? "
                           f"WHERE {mine}", (done_through, now, topic, part, first, owner))
    return cur.rowcount == 1


def cleanup(conn: sqlite3.Connection, cutoff: float) -> int:
    return conn.execute(f"DELETE FROM {RANGES} WHERE status = 'done' AND updated_at < ?", (cutoff,)).rowcount
