"""The inbox pattern: ``store.transaction()`` commits the user's write and the DONE mark together or not at all.

Runs on SqliteStore and PostgresStore (InMemoryStore refuses ``transaction()``, see the contract tests),
including a worker process SIGKILLed in the middle of a transaction, and the crash-loop delivery counter
surviving real process deaths (DESIGN guarantees 2 and 6).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamguard.core.idempotency import ClaimOutcome, ClaimStatus
from streamguard.errors import LeaseLost
from streamguard.stores import PostgresStore, SqliteStore
from tests.unit.test_idempotency_store import FakeClock, pg_dsn  # noqa: F401  (pg_dsn is a fixture)

LEASE = 30.0
REPO = Path(__file__).resolve().parents[2]


class Env:
    """One store kind plus raw access to the same database, to set up and inspect the user's table."""

    def __init__(self, kind: str, target: str, table: str) -> None:
        self.kind, self.target, self.table = kind, target, table
        self.stores: list[Any] = []

    def store(self, clock: Any = time.time) -> Any:
        s: Any
        if self.kind == "sqlite":
            s = SqliteStore(self.target, clock=clock)
        else:
            s = PostgresStore(self.target, table=self.table, clock=clock)
        s.open()
        self.stores.append(s)
        return s

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run SQL on a fresh autocommit connection (the "outside observer")."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.target, isolation_level=None) as conn:
                rows = list(conn.execute(statement, params))
            conn.close()
            return rows
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as pconn:
            cur = pconn.execute(statement.replace("?", "%s"), params)
            return list(cur.fetchall()) if cur.description else []

    def effects(self) -> list[str]:
        return [row[0] for row in self.execute("SELECT id FROM effects ORDER BY id")]

    @staticmethod
    def insert(conn: Any, kind: str, effect_id: str) -> None:
        """The user's side effect, written on the connection the store yielded."""
        conn.execute(f"INSERT INTO effects (id) VALUES ({'?' if kind == 'sqlite' else '%s'})", (effect_id,))


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "sqlite":
        e = Env("sqlite", str(tmp_path / "app.db"), "")
        with SqliteStore(e.target):  # create the file in WAL mode before the raw observer touches it
            pass
    else:
        e = Env("postgres", request.getfixturevalue("pg_dsn"), f"sg_{secrets.token_hex(6)}")
        e.execute("DROP TABLE IF EXISTS effects")  # the module's database is shared between tests
    e.execute("CREATE TABLE effects (id TEXT PRIMARY KEY)")
    yield e
    for s in e.stores:
        s.close()


def test_user_write_and_done_mark_commit_together(env: Env) -> None:
    clock = FakeClock()
    store = env.store(clock)
    assert store.claim("order-1", "a", LEASE).status is ClaimStatus.ACQUIRED
    with store.transaction("order-1", "a") as conn:
        env.insert(conn, env.kind, "charge-1")
        assert env.effects() == []  # not visible to anyone else before commit
        assert store.deliveries("order-1") == 1
    assert env.effects() == ["charge-1"]
    assert store.claim("order-1", "b", LEASE) == ClaimOutcome(ClaimStatus.DONE, 1)


def test_exception_inside_rolls_back_write_and_leaves_key_claimable(env: Env) -> None:
    clock = FakeClock()
    store = env.store(clock)
    store.claim("order-1", "a", LEASE)
    with pytest.raises(RuntimeError, match="boom"), store.transaction("order-1", "a") as conn:
        env.insert(conn, env.kind, "charge-1")
        raise RuntimeError("boom")
    assert env.effects() == []
    assert store.claim("order-1", "b", LEASE).status is ClaimStatus.BUSY  # still a's claim, not DONE
    store.release("order-1", "a")
    assert store.claim("order-1", "b", LEASE) == ClaimOutcome(ClaimStatus.ACQUIRED, 2)
    with store.transaction("order-1", "b") as conn:  # the connection is reusable after a rollback
        env.insert(conn, env.kind, "charge-1")
    assert env.effects() == ["charge-1"]


def test_fenced_owner_gets_lease_lost_and_nothing_is_written(env: Env) -> None:
    clock = FakeClock()
    store = env.store(clock)
    store.claim("order-1", "a", LEASE)
    clock.advance(LEASE + 1)  # a's handler was too slow ...
    assert env.store(clock).claim("order-1", "b", LEASE).status is ClaimStatus.ACQUIRED  # ... and b took over
    with pytest.raises(LeaseLost) as info, store.transaction("order-1", "a") as conn:
        env.insert(conn, env.kind, "charge-by-a")
    assert (info.value.key, info.value.owner) == ("order-1", "a")
    assert env.effects() == []
    assert store.claim("order-1", "c", LEASE) == ClaimOutcome(ClaimStatus.BUSY, 2)  # b's claim untouched
    with store.transaction("order-1", "b") as conn:
        env.insert(conn, env.kind, "charge-by-b")
    assert env.effects() == ["charge-by-b"]


def test_takeover_while_transaction_is_open(env: Env) -> None:
    """PostgreSQL lets b take an expired claim mid-transaction, so a's commit is fenced; SQLite's write lock
    (BEGIN IMMEDIATE) keeps every other writer out until a finishes, so a's commit wins and b sees DONE."""
    clock = FakeClock()
    store = env.store(clock)
    other = env.store(clock)
    store.claim("order-1", "a", LEASE)
    if env.kind == "postgres":
        with pytest.raises(LeaseLost), store.transaction("order-1", "a") as conn:
            env.insert(conn, env.kind, "charge-by-a")
            clock.advance(LEASE + 1)
            assert other.claim("order-1", "b", LEASE).status is ClaimStatus.ACQUIRED
        assert env.effects() == []
        assert other.complete("order-1", "b") is True
    else:
        impatient = SqliteStore(env.target, clock=clock, busy_timeout=0.05)
        env.stores.append(impatient)
        impatient.open()
        with store.transaction("order-1", "a") as conn:
            env.insert(conn, env.kind, "charge-by-a")
            clock.advance(LEASE + 1)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                impatient.claim("order-1", "b", LEASE)
        assert other.claim("order-1", "b", LEASE) == ClaimOutcome(ClaimStatus.DONE, 1)
        assert env.effects() == ["charge-by-a"]


def test_key_completed_by_another_owner_is_fenced(env: Env) -> None:
    clock = FakeClock()
    store = env.store(clock)
    store.claim("order-1", "a", LEASE)
    clock.advance(LEASE + 1)
    store.claim("order-1", "b", LEASE)
    store.complete("order-1", "b")
    with pytest.raises(LeaseLost), store.transaction("order-1", "a") as conn:
        env.insert(conn, env.kind, "duplicate")
    assert env.effects() == []


def test_expired_claim_nobody_took_still_commits(env: Env) -> None:
    clock = FakeClock()
    store = env.store(clock)
    store.claim("order-1", "a", LEASE)
    with store.transaction("order-1", "a") as conn:
        env.insert(conn, env.kind, "slow-but-alone")
        clock.advance(LEASE * 2)
    assert env.effects() == ["slow-but-alone"]
    assert store.claim("order-1", "b", LEASE).status is ClaimStatus.DONE


# -- real process deaths --------------------------------------------------------------------------

_CHILD = r"""
import json, sys, time
from streamguard.stores import PostgresStore, SqliteStore

args = json.loads(sys.argv[1])
if args["kind"] == "sqlite":
    store = SqliteStore(args["target"])
else:
    store = PostgresStore(args["target"], table=args["table"])
store.open()

def say(**msg):
    print(json.dumps(msg), flush=True)

outcome = store.claim(args["key"], args["owner"], args["lease"])
if args["mode"] == "claim":
    say(status=outcome.status.value, deliveries=outcome.deliveries)
    time.sleep(3600)  # "hangs" until killed, like a handler that crashes the worker
with store.transaction(args["key"], args["owner"]) as conn:
    mark = "?" if args["kind"] == "sqlite" else "%s"
    conn.execute(f"INSERT INTO effects (id) VALUES ({mark})", (args["effect"],))
    pid = conn.info.backend_pid if args["kind"] == "postgres" else None
    if args["mode"] == "kill-inside":
        say(stage="inside", backend_pid=pid)
        time.sleep(3600)
say(stage="committed", backend_pid=pid)
time.sleep(3600)
"""


def _spawn(env: Env, **args: Any) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a worker-like child, wait for its one status line; the caller SIGKILLs it."""
    payload = {"kind": env.kind, "target": env.target, "table": env.table, "lease": LEASE, **args}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(payload)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 60)
    line = child.stdout.readline() if ready else ""
    if not line:
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"child did not report: {err}")
    return child, json.loads(line)


def _sigkill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    if child.stdout is not None:
        child.stdout.close()
    if child.stderr is not None:
        child.stderr.close()


def _wait_backend_gone(env: Env, backend_pid: int | None) -> None:
    """PostgreSQL aborts a dead client's transaction when it notices the closed socket; wait for that."""
    if env.kind != "postgres":
        return
    deadline = time.monotonic() + 30
    while env.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ?", (backend_pid,)):
        assert time.monotonic() < deadline, "backend of the killed worker never went away"
        time.sleep(0.05)


def test_sigkill_inside_transaction_leaves_neither_effect_nor_mark(env: Env) -> None:
    child, msg = _spawn(env, key="order-9", owner="victim", effect="charge-9", mode="kill-inside")
    assert msg["stage"] == "inside"
    _sigkill(child)
    _wait_backend_gone(env, msg["backend_pid"])
    assert env.effects() == []
    later = env.store(FakeClock(time.time() + 10 * LEASE))  # the victim's lease has long expired
    assert later.claim("order-9", "survivor", LEASE) == ClaimOutcome(ClaimStatus.ACQUIRED, 2)
    with later.transaction("order-9", "survivor") as conn:  # and the redelivery applies it exactly once
        env.insert(conn, env.kind, "charge-9")
    assert env.effects() == ["charge-9"]


def test_sigkill_after_commit_keeps_both_effect_and_mark(env: Env) -> None:
    """Positive control for the test above: the same kill after COMMIT must find both."""
    child, msg = _spawn(env, key="order-9", owner="victim", effect="charge-9", mode="kill-after-commit")
    assert msg["stage"] == "committed"
    _sigkill(child)
    _wait_backend_gone(env, msg["backend_pid"])
    assert env.effects() == ["charge-9"]
    later = env.store(FakeClock(time.time() + 10 * LEASE))
    assert later.claim("order-9", "survivor", LEASE) == ClaimOutcome(ClaimStatus.DONE, 1)


def test_crash_loop_counter_survives_worker_deaths(env: Env) -> None:
    """Each killed worker's claim was counted before it died, so the next one sees deliveries == kills + 1."""
    for k in range(1, 4):
        child, msg = _spawn(env, key="poison", owner=f"worker-{k}", mode="claim", lease=0.0)
        assert msg == {"status": "acquired", "deliveries": k}
        _sigkill(child)
    survivor = env.store()
    assert survivor.claim("poison", "worker-4", LEASE) == ClaimOutcome(ClaimStatus.ACQUIRED, 4)
