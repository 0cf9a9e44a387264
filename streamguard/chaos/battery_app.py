"""The chaos battery's worker: ``streamguard run streamguard.chaos.battery_app:app``, configured by environment.

Its handler appends a ``deliveries.jsonl`` row (one ``write`` on an O_APPEND descriptor, so lines from several
processes never interleave) *before* doing anything, then acts on the message's kind (see
:mod:`streamguard.chaos.workload`). For ``ok`` (and the successful retry of ``hang``) it writes the effect --
one row of the ``chaos_effects`` ledger, exported to ``effects.jsonl`` after the run -- according to
``SG_CHAOS_MODE``:

- ``atomic`` (the real thing): inside ``ctx.transaction()``, so the effect and the idempotency completion
  commit together (SqliteStore on ``SG_CHAOS_DB``, or PostgresStore when ``STREAMGUARD_PG_DSN`` is set).
- ``nonatomic`` (negative control): same store, but the effect is committed on its own connection first and
  the runtime marks completion afterwards -- a crash in between duplicates the effect.
- ``nostore`` (negative control): no idempotency store at all.
- ``memory`` (negative control): an ``InMemoryStore``, whose delivery counter dies with the process, so a
  crash-poison message is redelivered forever.

Handler crash points (``SG_CHAOS_HANDLER_CRASH=before_effect:0.01,after_effect_before_mark:0.02``) exit the
process with codes 71 / 72; ``crash`` messages exit with 70. Runtime crash points use ``STREAMGUARD_CRASH_AT``
(exit 137). The supervisor in :mod:`streamguard.chaos.harness` tells faults apart by these codes.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from streamguard import App, Context, PermanentFailure, Retry, Settings
from streamguard.chaos.workload import INSERT_EFFECT, MAX_MESSAGE_BYTES, append_jsonl
from streamguard.core.idempotency import InMemoryStore

EXIT_CRASH_MESSAGE = 70
EXIT_BEFORE_EFFECT = 71
EXIT_AFTER_EFFECT = 72
HANDLER_TIMEOUT_S = float(os.environ.get("SG_CHAOS_HANDLER_TIMEOUT", "2.0"))
MODES = ("atomic", "nonatomic", "nostore", "memory")



class Payload(msgspec.Struct):
    id: str
    kind: str
    pad: str = ""


def _crash_points(text: str) -> dict[str, float]:
    points: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        name, _, p = item.partition(":")
        points[name.strip()] = float(p or 1.0)
    return points


class _Settings:
    """Everything the worker reads from its environment, in one place."""

    def __init__(self) -> None:
        env = os.environ
        self.dir = env.get("SG_CHAOS_DIR", ".")
        self.topic = env.get("SG_CHAOS_TOPIC", "chaos")
        self.group = env.get("SG_CHAOS_GROUP", f"chaos-{self.topic}")
        self.mode = env.get("SG_CHAOS_MODE", "atomic")
        if self.mode not in MODES:
            raise ValueError(f"SG_CHAOS_MODE must be one of {MODES}, got {self.mode!r}")
        self.db = env.get("SG_CHAOS_DB", os.path.join(self.dir, "chaos.db"))
        self.pg_dsn = env.get("STREAMGUARD_PG_DSN") or None
        self.crash = _crash_points(env.get("SG_CHAOS_HANDLER_CRASH", ""))
        self.session_ms = int(env.get("SG_CHAOS_SESSION_MS", "6000"))
        self.create_failure_topics = env.get("SG_CHAOS_CREATE_FAILURE_TOPICS", "0") == "1"


CFG = _Settings()
_rnd = random.Random()
_deliveries_fd = os.open(os.path.join(CFG.dir, "deliveries.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _maybe_crash(point: str, code: int) -> None:
    p = CFG.crash.get(point)
    if p and _rnd.random() < p:
        os._exit(code)


def _make_store() -> Any:
    if CFG.mode == "nostore":
        return None
    if CFG.mode == "memory":
        return InMemoryStore()
    if CFG.pg_dsn:
        from streamguard.stores.postgres import PostgresStore

        return PostgresStore(CFG.pg_dsn)
    from streamguard.stores.sqlite import SqliteStore

    return SqliteStore(CFG.db)


class _Sink:
    """Where non-transactional effects go (the negative controls): a connection of its own, autocommit."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if CFG.pg_dsn:
                import psycopg

                conn = psycopg.connect(CFG.pg_dsn, autocommit=True)
            else:
                conn = sqlite3.connect(CFG.db, timeout=30, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        yield conn


_sink = _Sink()
_INSERT = INSERT_EFFECT.replace("?", "%s") if CFG.pg_dsn else INSERT_EFFECT

app = App(CFG.group, idempotency=_make_store(),
          settings=Settings(commit_interval=0.5, lease_seconds=10.0, create_failure_topics=CFG.create_failure_topics,
                            detect_gaps=True,
                            kafka={"session.timeout.ms": CFG.session_ms, "topic.metadata.refresh.interval.ms": 2000}))


def _row(msg: Payload, ctx: Context) -> tuple[Any, ...]:
    key = ctx.key.decode("utf-8", "replace") if ctx.key else ""
    return (msg.id, key, ctx.partition, ctx.offset, ctx.worker_id, time.time())


@app.handler(CFG.topic, model=Payload, concurrency=8, timeout=HANDLER_TIMEOUT_S, max_deliveries=3,
             max_message_bytes=MAX_MESSAGE_BYTES, key=lambda msg, ctx: msg.id,
             retry=Retry(attempts=6, backoff=(0.1, 1.0)))
def handle(msg: Payload, ctx: Context) -> None:
    append_jsonl(_deliveries_fd, {"id": msg.id, "partition": ctx.partition, "offset": ctx.offset,
                                  "worker": ctx.worker_id, "attempt": ctx.attempt, "t": time.time()})
    if msg.kind == "crash":
        os._exit(EXIT_CRASH_MESSAGE)
    if msg.kind == "poison":
        raise PermanentFailure(f"{msg.id} is poison")
    if msg.kind == "hang" and ctx.attempt == 1:
        time.sleep(HANDLER_TIMEOUT_S + 1.0)  # past the timeout: the runtime gives up on this attempt
        return  # (a sync handler cannot be interrupted; this late return must change nothing)
    _maybe_crash("before_effect", EXIT_BEFORE_EFFECT)
    if CFG.mode == "atomic":
        with ctx.transaction() as db:
            db.execute(_INSERT, _row(msg, ctx))
            _maybe_crash("after_effect_before_mark", EXIT_AFTER_EFFECT)  # inside: the crash rolls both back
        return
    with _sink.connection() as db:
        db.execute(_INSERT, _row(msg, ctx))
    _maybe_crash("after_effect_before_mark", EXIT_AFTER_EFFECT)

