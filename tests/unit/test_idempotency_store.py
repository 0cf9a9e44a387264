"""The idempotency-store contract (DESIGN guarantees 2 and 6), run against every store.

The same tests run on InMemoryStore, SqliteStore and PostgresStore; time comes from a fake clock so
lease expiry needs no sleeping. The PostgreSQL variant creates its own database and drops it afterwards;
without STREAMGUARD_PG_DSN it is skipped, except under CI where a missing database is a failure.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamguard.core.idempotency import ClaimOutcome, ClaimStatus, IdempotencyStore, InMemoryStore
from streamguard.errors import ConfigError, StreamguardError
from streamguard.stores import PostgresStore, SqliteStore

ACQUIRED, DONE, BUSY = ClaimStatus.ACQUIRED, ClaimStatus.DONE, ClaimStatus.BUSY
LEASE = 30.0


class FakeClock:
    """A settable clock: tests advance time instead of sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def admin_dsn() -> str:
    """The server to create test databases on; skip without one, but never silently in CI."""
    dsn = os.environ.get("STREAMGUARD_PG_DSN")
    if not dsn:
        if os.environ.get("CI"):
            pytest.fail("STREAMGUARD_PG_DSN is not set but CI is: the PostgreSQL store must be tested in CI")
        pytest.skip("STREAMGUARD_PG_DSN is not set (start one with tests/support/postgres.sh)")
    return dsn


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A fresh database ``sg_test_<random>`` for this module, dropped afterwards."""
    admin = admin_dsn()
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"sg_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass
class Backend:
    """Makes opened stores of one kind; every store made by one Backend shares the same storage."""

    kind: str
    factory: Callable[[FakeClock], Any]
    opened: list[Any] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    def make(self, clock: FakeClock) -> Any:
        store = self.factory(clock)
        store.open()
        self.opened.append(store)
        return store


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "memory":
        return Backend(kind, lambda clock: InMemoryStore(clock=clock))
    if kind == "sqlite":
        path = tmp_path / "nested" / "dir" / "idempotency.db"
        return Backend(kind, lambda clock: SqliteStore(path, clock=clock))
    dsn = request.getfixturevalue("pg_dsn")
    table = f"sg_{secrets.token_hex(6)}"
    return Backend(kind, lambda clock: PostgresStore(dsn, table=table, clock=clock))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = make_backend(request.param, request, tmp_path)
    yield b
    for store in b.opened:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = make_backend(request.param, request, tmp_path)
    yield b
    for store in b.opened:
        store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(backend: Backend, clock: FakeClock) -> IdempotencyStore:
    s: IdempotencyStore = backend.make(clock)
    return s


def test_every_store_satisfies_the_protocol(store: IdempotencyStore) -> None:
    assert isinstance(store, IdempotencyStore)


def test_first_claim_acquires_with_one_delivery(store: IdempotencyStore) -> None:
    assert store.claim("k", "a", LEASE) == ClaimOutcome(ACQUIRED, 1)
    assert store.deliveries("k") == 1


def test_unknown_key_has_zero_deliveries(store: IdempotencyStore) -> None:
    assert store.deliveries("never-seen") == 0


def test_other_owner_is_busy_while_lease_is_live(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim("k", "a", LEASE)
    clock.advance(LEASE - 0.001)
    assert store.claim("k", "b", LEASE) == ClaimOutcome(BUSY, 1)
    assert store.deliveries("k") == 1


def test_expired_lease_can_be_taken_and_counts_a_delivery(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim("k", "a", LEASE)
    clock.advance(LEASE)  # expires_at == now: expired
    assert store.claim("k", "b", LEASE) == ClaimOutcome(ACQUIRED, 2)
    assert store.claim("k", "a", LEASE) == ClaimOutcome(BUSY, 2)


def test_kth_claim_reports_k_deliveries(store: IdempotencyStore, clock: FakeClock) -> None:
    """A message that crashes the worker every time is seen with a growing counter (crash-loop detection)."""
    for k in range(1, 6):
        assert store.claim("poison", f"worker-{k}", LEASE) == ClaimOutcome(ACQUIRED, k)
        clock.advance(LEASE + 1)  # the worker died: nobody completes or releases


def test_same_owner_reclaiming_its_live_claim_acquires_and_bumps(store: IdempotencyStore) -> None:
    store.claim("k", "a", LEASE)
    assert store.claim("k", "a", LEASE) == ClaimOutcome(ACQUIRED, 2)


def test_completed_key_is_done_for_everyone_and_counter_stays(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim("k", "a", LEASE)
    assert store.complete("k", "a") is True
    clock.advance(10 * LEASE)
    assert store.claim("k", "b", LEASE) == ClaimOutcome(DONE, 1)
    assert store.claim("k", "a", LEASE) == ClaimOutcome(DONE, 1)
    assert store.deliveries("k") == 1


def test_complete_is_idempotent_for_the_completing_owner(store: IdempotencyStore) -> None:
    store.claim("k", "a", LEASE)
    assert store.complete("k", "a") is True
    assert store.complete("k", "a") is True


def test_fenced_owner_cannot_complete(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim("k", "a", LEASE)
    clock.advance(LEASE + 1)
    assert store.claim("k", "b", LEASE).status is ACQUIRED
    assert store.complete("k", "a") is False  # b holds a live lease
    assert store.claim("k", "c", LEASE) == ClaimOutcome(BUSY, 2)  # still b's, not done
    assert store.complete("k", "b") is True
    assert store.complete("k", "a") is False  # completed by someone else: a's result does not count


def test_expired_claim_nobody_took_can_still_be_completed(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim("k", "a", LEASE)
    clock.advance(LEASE * 3)
    assert store.complete("k", "a") is True
    assert store.claim("k", "b", LEASE) == ClaimOutcome(DONE, 1)


def test_completion_after_taker_also_expired_succeeds(store: IdempotencyStore, clock: FakeClock) -> None:
    """Fencing only protects a *live* holder: once b's lease lapsed too, a late completion is accepted."""
    store.claim("k", "a", LEASE)
    clock.advance(LEASE + 1)
    store.claim("k", "b", LEASE)
    clock.advance(LEASE + 1)
    assert store.complete("k", "a") is True
    assert store.claim("k", "b", LEASE) == ClaimOutcome(DONE, 2)


def test_release_keeps_counter_and_frees_the_key(store: IdempotencyStore) -> None:
    store.claim("k", "a", LEASE)
    store.release("k", "a")
    assert store.deliveries("k") == 1
    assert store.claim("k", "b", LEASE) == ClaimOutcome(ACQUIRED, 2)  # no need to wait for the lease


def test_release_by_a_non_owner_changes_nothing(store: IdempotencyStore) -> None:
    store.claim("k", "a", LEASE)
    store.release("k", "b")
    assert store.claim("k", "b", LEASE) == ClaimOutcome(BUSY, 1)
    store.complete("k", "a")
    store.release("k", "a")  # releasing a DONE key does not un-complete it
    assert store.claim("k", "b", LEASE) == ClaimOutcome(DONE, 1)


def test_released_key_can_be_completed(store: IdempotencyStore) -> None:
    store.claim("k", "a", LEASE)
    store.release("k", "a")
    assert store.complete("k", "b") is True
    assert store.claim("k", "a", LEASE).status is DONE


def test_renew_extends_own_lease_only(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim("k", "a", LEASE)
    clock.advance(LEASE - 1)
    assert store.renew("k", "a", LEASE) is True
    assert store.renew("k", "b", LEASE) is False
    clock.advance(LEASE - 1)  # past the original expiry, inside the renewed one
    assert store.claim("k", "b", LEASE) == ClaimOutcome(BUSY, 1)
    clock.advance(2)
    assert store.claim("k", "b", LEASE).status is ACQUIRED
    assert store.renew("k", "a", LEASE) is False  # lost to b
    assert store.renew("missing", "a", LEASE) is False


def test_claim_many_reports_each_key(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim("done", "x", LEASE)
    store.complete("done", "x")
    store.claim("expired", "x", 1.0)
    store.claim("busy", "x", LEASE)
    store.claim("released", "x", LEASE)
    store.release("released", "x")
    clock.advance(2.0)
    outcomes = store.claim_many(["new", "done", "busy", "expired", "released", "new"], "a", LEASE)
    assert outcomes == [
        ClaimOutcome(ACQUIRED, 1),
        ClaimOutcome(DONE, 1),
        ClaimOutcome(BUSY, 1),
        ClaimOutcome(ACQUIRED, 2),
        ClaimOutcome(ACQUIRED, 2),
        ClaimOutcome(ACQUIRED, 1),  # a repeated key is claimed once; every occurrence gets that outcome
    ]
    assert store.deliveries("new") == 1
    assert store.claim_many([], "a", LEASE) == []


def test_complete_many_reports_fencing_per_key(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim_many(["mine", "stolen", "lapsed"], "a", LEASE)
    clock.advance(LEASE + 1)
    store.claim("stolen", "b", LEASE)
    store.renew("mine", "a", LEASE)
    assert store.complete_many(["mine", "stolen", "lapsed", "mine"], "a") == [True, False, True, True]
    assert [o.status for o in store.claim_many(["mine", "stolen", "lapsed"], "c", LEASE)] == [DONE, BUSY, DONE]
    assert store.complete_many([], "a") == []


def test_cleanup_deletes_only_old_done_records(store: IdempotencyStore, clock: FakeClock) -> None:
    store.claim_many(["old", "recent", "pending"], "a", 1000.0)
    store.complete("old", "a")
    clock.advance(100)
    store.complete("recent", "a")
    clock.advance(20)
    assert store.cleanup(older_than_seconds=50) == 1  # only "old" (completed 120 s ago)
    assert store.cleanup(older_than_seconds=50) == 0
    assert store.claim("recent", "b", LEASE).status is DONE
    assert store.claim("pending", "b", LEASE) == ClaimOutcome(BUSY, 1)  # never cleaned while not done
    assert store.claim("old", "b", LEASE) == ClaimOutcome(ACQUIRED, 1)  # forgotten entirely


def test_reset_deliveries_restarts_the_counter(store: IdempotencyStore, clock: FakeClock) -> None:
    for owner in ("a", "b", "c"):
        store.claim("k", owner, LEASE)
        clock.advance(LEASE + 1)
    assert store.deliveries("k") == 3
    store.reset_deliveries("k")
    assert store.deliveries("k") == 0
    assert store.claim("k", "d", LEASE) == ClaimOutcome(ACQUIRED, 1)
    store.reset_deliveries("unknown")  # no error, nothing created
    assert store.deliveries("unknown") == 0


def test_transaction_support_is_declared(store: IdempotencyStore) -> None:
    if isinstance(store, InMemoryStore):
        assert store.supports_transactions is False
        with pytest.raises(ConfigError, match="transaction"):
            store.transaction("k", "a")
    else:
        assert store.supports_transactions is True


def test_using_a_closed_store_is_a_clear_error(backend: Backend, clock: FakeClock) -> None:
    s = backend.make(clock)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StreamguardError, match="not open"):
        s.claim("k", "a", LEASE)


def test_state_survives_reopening_the_store(durable_backend: Backend, clock: FakeClock) -> None:
    """A restarted worker (new process, new store object) sees claims, completions and counters."""
    first = durable_backend.make(clock)
    first.claim("crashy", "w1", LEASE)
    first.claim("ok", "w1", LEASE)
    first.complete("ok", "w1")
    first.close()  # the worker is gone; its claim on "crashy" was never released
    second = durable_backend.make(clock)
    assert second.claim("crashy", "w2", LEASE) == ClaimOutcome(BUSY, 1)  # lease still live
    clock.advance(LEASE)
    assert second.claim("crashy", "w2", LEASE) == ClaimOutcome(ACQUIRED, 2)
    assert second.claim("ok", "w2", LEASE) == ClaimOutcome(DONE, 1)


def test_two_store_objects_on_one_storage_agree(durable_backend: Backend, clock: FakeClock) -> None:
    one, two = durable_backend.make(clock), durable_backend.make(clock)
    assert one.claim("k", "a", LEASE).status is ACQUIRED
    assert two.claim("k", "b", LEASE) == ClaimOutcome(BUSY, 1)
    assert one.complete("k", "a") is True
    assert two.claim("k", "b", LEASE) == ClaimOutcome(DONE, 1)


def _race(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` on n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


@pytest.mark.parametrize("sharing", ["one store", "store per thread"])
def test_concurrent_claims_acquire_exactly_once(backend: Backend, clock: FakeClock, sharing: str) -> None:
    if sharing == "store per thread" and not backend.durable:
        pytest.skip("separate InMemoryStores share nothing by design")
    stores = [backend.make(clock)] * 8 if sharing == "one store" else [backend.make(clock) for _ in range(8)]
    for round_ in range(10):
        key = f"hot-{round_}"

        def work(i: int, key: str = key) -> ClaimOutcome:
            return stores[i].claim(key, f"owner-{i}", LEASE)

        outcomes = _race(8, work)
        statuses = sorted(o.status for o in outcomes)
        assert statuses == [ACQUIRED] + [BUSY] * 7, outcomes
        assert stores[0].deliveries(key) == 1


def test_concurrent_overlapping_batches_acquire_each_key_once(backend: Backend, clock: FakeClock) -> None:
    """Batches in different orders must neither deadlock nor double-acquire."""
    keys = [f"k{i:02d}" for i in range(40)]
    shared = backend.make(clock)

    def work(i: int) -> list[ClaimOutcome]:
        batch = keys[i * 3 :] + keys[: i * 3]  # same keys, rotated
        batch = batch[::-1] if i % 2 else batch
        return [o for o in shared.claim_many(batch, f"owner-{i}", LEASE)]

    results = _race(8, work)
    acquired = sum(o.status is ACQUIRED for outcomes in results for o in outcomes)
    assert acquired == len(keys)
    assert all(shared.deliveries(k) == 1 for k in keys)


def test_peek_reads_done_and_counter_without_changing_anything(store: IdempotencyStore) -> None:
    store.claim("a", "w1", LEASE)
    store.complete("a", "w1")
    store.claim("b", "w1", LEASE)
    store.claim("b", "w1", LEASE)
    assert store.peek_many(["a", "b", "c"]) == [(True, 1), (False, 2), (False, 0)]
    assert store.peek_many(["b"]) == [(False, 2)]  # peeking again bumped nothing
    assert store.deliveries("c") == 0


def test_claim_unless_suspect_sorts_fresh_done_and_suspect_keys(store: IdempotencyStore, clock: FakeClock) -> None:
    """The runtime's batched first claim (one transaction on SqliteStore, peek + claim elsewhere) must give the
    same answers on every store: fresh and counter-reset keys are claimed, DONE keys reported, keys delivered
    before without resolving come back None with their counter untouched."""
    from streamguard.runtime.store_batcher import StoreBatcher

    store.claim("done", "w0", LEASE)
    store.complete("done", "w0")
    store.claim("suspect", "w0", LEASE)  # a delivery that never resolved (a crash)
    store.claim("expired", "w0", LEASE)
    store.claim("reset", "w0", LEASE)
    store.release("reset", "w0")
    store.reset_deliveries("reset")  # what a replay does
    clock.advance(LEASE + 1)
    store.claim("suspect", "w9", LEASE)  # and another owner's live claim on it now

    with ThreadPoolExecutor(1) as pool:
        batcher = StoreBatcher(store, pool, "w1", LEASE)
        out = batcher.claim_unless_suspect_many(["new1", "done", "suspect", "expired", "reset", "new2", "new1"])
    assert out == [ClaimOutcome(ACQUIRED, 1), ClaimOutcome(DONE, 1), None, None, ClaimOutcome(ACQUIRED, 1),
                   ClaimOutcome(ACQUIRED, 1), ClaimOutcome(ACQUIRED, 1)]
    assert [store.deliveries(k) for k in ("new1", "suspect", "expired", "reset", "new2")] == [1, 2, 1, 1, 1]
    assert store.complete_many(["new1", "new2", "suspect", "reset"], "w1") == [True, True, False, True]
    assert store.peek_many(["new1", "suspect", "reset"]) == [(True, 1), (False, 2), (True, 1)]
