"""SqliteStore's offset ranges (the claimed lane's chunk as one row) read exactly like per-key records: every
per-key call sees the same claims, completions, delivery counters and leases it would see with a row per key."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamguard.core.idempotency import ClaimOutcome, ClaimStatus
from streamguard.stores import SqliteStore
from streamguard.stores.sqlite_ranges import RANGES, coordinates, is_dense

ACQ1 = ClaimOutcome(ClaimStatus.ACQUIRED, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    s = SqliteStore(tmp_path / "idem.db", clock=clock)
    s.open()
    yield s
    s.close()


def keys(offsets: range | list[int], topic: str = "t", partition: int = 0) -> list[str]:
    return [f"{topic}/{partition}/{o}" for o in offsets]


def range_rows(store: SqliteStore) -> list[tuple]:
    with store._lock:
        return store._conn.execute(f"SELECT first, last, status, owner FROM {RANGES} ORDER BY first").fetchall()


def key_rows(store: SqliteStore) -> int:
    with store._lock:
        return store._conn.execute("SELECT count(*) FROM streamguard_idempotency").fetchone()[0]


def test_a_chunk_is_one_row_claimed_then_done_through_its_finished_prefix(store):
    outcomes, per_key = store.claim_chunk("t", 0, list(range(10, 20)), "w1", 30.0)
    assert outcomes == [ACQ1] * 10 and per_key == set()
    assert range_rows(store) == [(10, 19, "claimed", "w1")] and key_rows(store) == 0
    assert store.peek_many(keys([10, 19, 20])) == [(False, 1), (False, 1), (False, 0)]
    assert store.settle_chunk("t", 0, 10, "w1", 14)
    assert range_rows(store) == [(10, 14, "done", "w1")]
    assert store.peek_many(keys([10, 14, 15])) == [(True, 1), (True, 1), (False, 0)]
    # what the lane did not finish is unknown again: claimable as fresh; what it finished is DONE
    assert store.claim_unless_suspect_many(keys([14, 15]), "w2", 30.0) == [ClaimOutcome(ClaimStatus.DONE, 1), ACQ1]


def test_nothing_finished_drops_the_range(store):
    store.claim_chunk("t", 0, [1, 2, 3], "w1", 30.0)
    assert store.settle_chunk("t", 0, 1, "w1", None)
    assert range_rows(store) == [] and store.peek_many(keys([1, 2, 3])) == [(False, 0)] * 3


def test_a_live_range_fences_another_owner_key_by_key(store, clock):
    store.claim_chunk("t", 0, list(range(5)), "w1", 30.0)
    clock.now += 10  # lease still live
    assert store.claim_many(keys([2]), "w2", 30.0) == [ClaimOutcome(ClaimStatus.BUSY, 1)]
    assert range_rows(store) == [] and key_rows(store) == 5  # expanded into rows of w1's claims
    # w1's settle finds its range gone and must settle key by key (its claims are intact)
    assert not store.settle_chunk("t", 0, 0, "w1", 4)
    assert store.complete_many(keys(range(5)), "w1") == [True] * 5
    assert store.claim_many(keys([2]), "w2", 30.0) == [ClaimOutcome(ClaimStatus.DONE, 1)]


def test_a_crashed_lane_leaves_suspects_with_one_delivery(store, clock):
    store.claim_chunk("t", 0, list(range(100, 110)), "dead", 30.0)
    clock.now += 60  # the owner died: its lease expired
    assert store.claim_unless_suspect_many(keys([105]), "w2", 30.0) == [None]  # delivered once, unresolved
    assert store.claim_many(keys([105]), "w2", 30.0) == [ClaimOutcome(ClaimStatus.ACQUIRED, 2)]
    assert store.deliveries("t/0/109") == 1


def test_a_chunk_over_old_ranges_sees_done_and_suspect_keys(store, clock):
    store.claim_chunk("t", 0, list(range(0, 10)), "w1", 30.0)
    store.settle_chunk("t", 0, 0, "w1", 5)  # 0-5 done, 6-9 unknown
    store.claim_chunk("t", 0, list(range(6, 10)), "w1", 30.0)  # claimed again, then the worker dies
    clock.now += 60
    outcomes, _ = store.claim_chunk("t", 0, list(range(3, 12)), "w2", 30.0)  # a restart redelivers 3..11
    done = ClaimOutcome(ClaimStatus.DONE, 1)
    assert outcomes == [done, done, done, None, None, None, None, ACQ1, ACQ1]
    assert range_rows(store) == [(3, 11, "claimed", "w2")]  # the old ranges became rows: none overlaps
    assert store.settle_chunk("t", 0, 3, "w2", 5)  # the lane stops at the first suspect (offset 6)
    assert store.peek_many(keys([5, 6, 10])) == [(True, 1), (False, 1), (False, 0)]


def test_keys_with_rows_of_their_own_are_claimed_and_settled_key_by_key(store):
    store.claim_many(keys([7]), "w0", 30.0)
    store.reset_deliveries("t/0/7")
    store.release("t/0/7", "w0")  # e.g. dead-lettered: released with its counter at 0
    outcomes, per_key = store.claim_chunk("t", 0, list(range(5, 10)), "w1", 30.0)
    assert outcomes[2] == ACQ1 and per_key == {"t/0/7"}
    assert store.settle_chunk("t", 0, 5, "w1", 9)
    assert store.peek_many(keys([7])) == [(False, 1)]  # the range does not override the key's own row ...
    assert store.complete_many(["t/0/7"], "w1") == [True]  # ... which the lane completes key by key
    assert store.peek_many(keys(range(5, 10))) == [(True, 1)] * 5


def test_transaction_marks_a_key_of_a_live_range(store):
    store.claim_chunk("t", 0, [1, 2], "w1", 30.0)
    with store.transaction("t/0/1", "w1") as db:
        db.execute("CREATE TABLE IF NOT EXISTS effects (k TEXT)")
        db.execute("INSERT INTO effects VALUES ('one')")
    assert store.peek_many(keys([1, 2])) == [(True, 1), (False, 1)]
    assert not store.settle_chunk("t", 0, 1, "w1", 2)  # expanded by the transaction: key by key from here


def test_cleanup_forgets_old_done_ranges(store, clock):
    store.claim_chunk("t", 0, [1, 2], "w1", 30.0)
    store.settle_chunk("t", 0, 1, "w1", 2)
    clock.now += 100
    assert store.cleanup(50) == 1
    assert store.peek_many(keys([1])) == [(False, 0)]


def test_an_old_file_gets_the_ranges_table(tmp_path: Path):
    s = SqliteStore(tmp_path / "old.db")
    s.open()
    with s._lock:
        s._conn.execute(f"DROP TABLE {RANGES}")  # as written by a version without ranges
    s.close()
    s2 = SqliteStore(tmp_path / "old.db")
    s2.open()
    outcomes, _ = s2.claim_chunk("t", 1, [0, 1], "w", 30.0)
    assert outcomes == [ACQ1, ACQ1]
    s2.close()


def test_helpers():
    assert coordinates("orders.v1/3/42") == ("orders.v1", 3, 42)
    assert coordinates("order-17") is None and coordinates("a/b/c") is None
    assert is_dense(5, 8, 3) and not is_dense(1, 100, 2) and not is_dense(0, 0, 0)


def test_a_chunk_finds_rows_of_its_keys_across_a_power_of_ten_and_only_those(store, clock):
    for offset in (98, 1000, 10001):  # 1000 and 10001 sort between "t/0/100" and "t/0/105" as text
        store.claim_many(keys([offset]), "w0", 30.0)
        store.complete_many(keys([offset]), "w0")
    store.claim_many(keys([100]), "dead", 30.0)  # delivered, never resolved
    clock.now += 60
    outcomes, _ = store.claim_chunk("t", 0, list(range(95, 106)), "w1", 30.0)
    done = ClaimOutcome(ClaimStatus.DONE, 1)
    assert outcomes == [ACQ1, ACQ1, ACQ1, done, ACQ1, None, ACQ1, ACQ1, ACQ1, ACQ1, ACQ1]
    assert store.peek_many(keys([1000, 10001])) == [(True, 1), (True, 1)]


def test_a_span_nobody_touched_is_claimed_in_one_statement_across_powers_of_ten(store):
    assert store.claim_span("t", 0, 95, 1005, "w1", 30.0)
    assert range_rows(store) == [(95, 1005, "claimed", "w1")] and key_rows(store) == 0
    assert store.peek_many(keys([95, 999, 1005, 1006])) == [(False, 1)] * 3 + [(False, 0)]
    assert not store.claim_span("t", 0, 1000, 1010, "w2", 30.0)  # overlaps the live range: nothing written
    assert range_rows(store) == [(95, 1005, "claimed", "w1")]


@pytest.mark.parametrize("touched", [99, 100, 1000])
def test_a_span_with_a_key_row_in_any_decimal_length_is_not_claimed_as_untouched(store, touched):
    store.claim_many(keys([touched]), "w0", 30.0)
    assert not store.claim_span("t", 0, 95, 1005, "w1", 30.0)
    assert range_rows(store) == []
    assert store.claim_span("t", 0, 1001, 1005, "w1", 30.0)  # the keys around it are still untouched


def test_statement_connections_are_per_thread_and_closed_with_the_store(tmp_path: Path):
    import threading

    s = SqliteStore(tmp_path / "idem.db")
    s.open()
    assert s.claim_span("t", 0, 0, 9, "w", 30.0)
    other = threading.Thread(target=lambda: s.claim_span("t", 1, 0, 9, "w", 30.0))
    other.start()
    other.join()
    assert len(s._statement_conns) == 2
    s.close()
    assert s._statement_conns == []
    s.open()  # reopened: this thread gets a new connection instead of the closed one
    assert s.settle_chunk("t", 0, 0, "w", 9) and s.peek_many(["t/0/9", "t/1/9"]) == [(True, 1), (False, 1)]
    s.close()
