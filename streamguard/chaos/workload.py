"""The chaos battery's workload: messages with ids, keys and kinds, and the driver that produces them.

Every message is a JSON object ``{"id", "kind", "pad"}`` (except ``undecodable`` ones, which are not JSON) with
a Kafka key from a small key space and three headers: ``sg-chaos-id``, ``sg-chaos-kind`` and ``sg-seq`` (a
per-partition sequence number stamped by the producer, so a message lost before Kafka shows as a gap). The
driver picks the partition itself (crc32 of the key), which is what makes a per-partition sequence possible.

Kinds and what the battery's worker (:mod:`streamguard.chaos.battery_app`) does with them:

===========  ======================================================  ==========================
kind         handler                                                 correct outcome
===========  ======================================================  ==========================
ok           writes its effect (+ ledger row) in one transaction     exactly one effect
poison       raises ``PermanentFailure``                             DLQ
crash        ``os._exit(1)`` on every delivery                       quarantine (crash loop)
undecodable  never called: the bytes are not JSON                    quarantine, 0 attempts
oversized    never called: value > the handler's max_message_bytes   quarantine, 0 attempts
hang         first attempt sleeps past the handler timeout; a retry  exactly one effect
             then succeeds
===========  ======================================================  ==========================

The driver writes ``sends.jsonl`` in the format :mod:`streamguard.chaos.checker` reads. It never resends a
failed message under the same id (a send that failed may still have landed; a retry with the same id would make
the history ambiguous), so an unacked send is recorded with ``acked: false`` and the stream moves on.
"""

from __future__ import annotations

import base64
import os
import queue
import random
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "HEADER_ID",
    "HEADER_KIND",
    "HEADER_SEQ",
    "KINDS",
    "Driver",
    "JsonlWriter",
    "append_jsonl",
    "b64",
    "encode_message",
    "partition_for",
]

KINDS = ("ok", "poison", "crash", "undecodable", "oversized", "hang")
HEADER_ID = "sg-chaos-id"
HEADER_KIND = "sg-chaos-kind"
HEADER_SEQ = "sg-seq"
#: The runtime's own sequence header (``streamguard.chaos.sequencer``): ``"<producer-id>:<n>"`` per partition.
#: It is sent but not recorded in ``sends.jsonl``: the checker ignores ``streamguard.*`` headers on DLQ records,
#: so recording it would make every dead letter look altered. ``sg-seq`` carries the same number and is checked.
RUNTIME_SEQ_HEADER = "streamguard.seq"
#: The battery's handlers are registered with this ``max_message_bytes``; ``oversized`` values exceed it.
MAX_MESSAGE_BYTES = 2048


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def partition_for(key: str, partitions: int) -> int:
    """The driver's partitioner: stable, so a key always lands in one partition (per-key order is checkable)."""
    return zlib.crc32(key.encode()) % partitions


def encode_message(msg_id: str, kind: str, pad: int = 0) -> bytes:
    """The value bytes of a message of ``kind``."""
    if kind == "undecodable":
        return b"\xff\xfe not json \x00" + msg_id.encode()
    if kind == "oversized":
        pad = MAX_MESSAGE_BYTES + 512
    return orjson.dumps({"id": msg_id, "kind": kind, "pad": "x" * pad})


def append_jsonl(fd: int, row: Mapping[str, Any]) -> None:
    """Append one line with a single ``write`` on an O_APPEND descriptor (safe across processes)."""
    os.write(fd, orjson.dumps(row) + b"\n")


class JsonlWriter:
    """A thread-safe JSONL file appender for one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("ab")
        self._lock = threading.Lock()

    def write(self, row: Mapping[str, Any]) -> None:
        line = orjson.dumps(row) + b"\n"
        with self._lock:
            self._fh.write(line)

    def flush(self) -> None:
        with self._lock:
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()


class Driver:
    """Produce ``count`` messages at ``rate`` per second on a thread; record every send in ``sends.jsonl``.

    ``mix`` maps kinds to weights for the background stream; :meth:`inject` queues specific kinds to go out
    next (a scenario's poison burst). The producer is idempotent with ``acks=all``.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, out_dir: Path, *, count: int, rate: float,
                 id_prefix: str, mix: Mapping[str, float] | None = None, keys: int = 48, seed: int = 1,
                 pad: int = 64, producer_config: Mapping[str, Any] | None = None) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.count, self.rate, self.id_prefix, self.keys, self.pad = count, rate, id_prefix, keys, pad
        self.mix = dict(mix or {"ok": 1.0})
        unknown = set(self.mix) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}")
        self._rnd = random.Random(seed)
        self.producer_id = f"{id_prefix.rstrip('-')}-{seed}"
        self._injected: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._hold = threading.Event()
        self._sends = JsonlWriter(out_dir / "sends.jsonl")
        self._seq = dict.fromkeys(range(partitions), 0)
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.error: BaseException | None = None
        self._config = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                        "linger.ms": 5, "message.timeout.ms": 180000, "log_level": 0, **(producer_config or {})}
        self._thread = threading.Thread(target=self._run_safely, name="chaos-driver", daemon=True)

    # -- control --------------------------------------------------------------------------------------------
    def start(self) -> Driver:
        self._thread.start()
        return self

    def inject(self, kind: str, n: int = 1) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        for _ in range(n):
            self._injected.put(kind)

    def stop(self) -> None:
        self._stop.set()

    def hold(self, on: bool = True) -> None:
        """While held, keep producing past ``count`` (a scenario's faults always see traffic)."""
        if on:
            self._hold.set()
        else:
            self._hold.clear()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait_sent(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.sent < n and time.monotonic() < deadline and not self.done:
            time.sleep(0.05)
        return self.sent >= n

    # -- the producing thread -------------------------------------------------------------------------------
    def _kind(self) -> str:
        try:
            return self._injected.get_nowait()
        except queue.Empty:
            pass
        kinds, weights = zip(*self.mix.items(), strict=True)
        return str(self._rnd.choices(kinds, weights)[0])

    def _run_safely(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the harness; never silently lose the driver
            self.error = exc
        finally:
            self._sends.close()

    def _run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer(self._config)
        started = time.monotonic()
        i = 0
        while (i < self.count or self._hold.is_set()) and not self._stop.is_set():
            due = started + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                producer.poll(min(delay, 0.05))
                continue
            kind = self._kind()
            msg_id = f"{self.id_prefix}{i:06d}"
            key = f"k{self._rnd.randrange(self.keys):02d}"
            partition = partition_for(key, self.partitions)
            seq = self._seq[partition]
            self._seq[partition] = seq + 1
            value = encode_message(msg_id, kind, self.pad)
            headers: list[tuple[str, str | bytes | None]] = [
                (HEADER_ID, msg_id.encode()), (HEADER_KIND, kind.encode()), (HEADER_SEQ, str(seq).encode())]
            recorded = [[h, b64(v if isinstance(v, bytes) else None)] for h, v in headers]
            headers.append((RUNTIME_SEQ_HEADER, f"{self.producer_id}:{seq}".encode()))
            row: dict[str, Any] = {"id": msg_id, "key": key, "kind": kind, "acked": False, "partition": partition,
                                   "t": time.time(), "key_b64": b64(key.encode()), "value_b64": b64(value),
                                   "headers": recorded}
            with self._lock:
                self._pending[msg_id] = row
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key.encode(), headers=headers, partition=partition,
                                     on_delivery=self._on_delivery(msg_id))
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            self.sent += 1
            i += 1
        deadline = time.monotonic() + 200
        while producer.flush(1.0) > 0 and time.monotonic() < deadline:
            pass
        with self._lock:  # never reported: recorded as not acknowledged
            left, self._pending = list(self._pending.values()), {}
        for row in left:
            self.failed += 1
            self._sends.write({**row, "error": "no delivery report"})

    def _on_delivery(self, msg_id: str) -> Callable[[Any, Any], None]:
        def delivered(err: Any, msg: Any) -> None:
            with self._lock:
                row = self._pending.pop(msg_id, None)
            if row is None:
                return
            if err is None:
                row.update(acked=True, partition=msg.partition(), offset=msg.offset(), t=time.time())
                self.acked += 1
            else:
                row["error"] = str(err)
                self.failed += 1
            self._sends.write(row)

        return delivered


# -- the effect ledger (a table next to the idempotency store) ----------------------------------------------------
EFFECTS_DDL = ("CREATE TABLE IF NOT EXISTS chaos_effects (id TEXT NOT NULL, key TEXT, part INTEGER, off BIGINT, "
               "worker TEXT, t DOUBLE PRECISION)")
INSERT_EFFECT = "INSERT INTO chaos_effects (id, key, part, off, worker, t) VALUES (?, ?, ?, ?, ?, ?)"
_SELECT_EFFECTS = "SELECT id, key, part, off, worker, t FROM chaos_effects"


def prepare_effects_table(db_path: Path, pg_dsn: str | None = None) -> None:
    """Create the ledger table before workers start."""
    if pg_dsn:
        import psycopg

        with psycopg.connect(pg_dsn, autocommit=True) as pconn:
            pconn.execute(EFFECTS_DDL)
        return
    import sqlite3

    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(EFFECTS_DDL)
    finally:
        conn.close()


def export_effects(db_path: Path, out: Path, pg_dsn: str | None = None) -> int:
    """Write ``effects.jsonl`` from the ledger table; returns the number of rows."""
    if pg_dsn:
        import psycopg

        with psycopg.connect(pg_dsn) as pconn:
            rows: list[Any] = list(pconn.execute(_SELECT_EFFECTS).fetchall())
    else:
        import sqlite3

        sconn = sqlite3.connect(db_path, timeout=30)
        try:
            rows = sconn.execute(_SELECT_EFFECTS).fetchall()
        finally:
            sconn.close()
    writer = JsonlWriter(out)
    try:
        for msg_id, key, part, off, worker, t in rows:
            writer.write({"id": msg_id, "key": key, "partition": part, "offset": off, "worker": worker, "t": t})
    finally:
        writer.close()
    return len(rows)
