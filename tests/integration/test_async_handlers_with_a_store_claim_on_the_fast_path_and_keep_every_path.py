"""Runtime + failure handling: an async key-ordered handler with an idempotency store runs on the fast path
(claims and completions batched with the other calls of the loop tick, one task per concurrency slot) and still
keeps per-key order, skips keys already DONE without calling the handler, applies ctx.transaction effects
once, sends failures, undecodable records and custom-key records down the full path, and counts exactly the
deliveries each key got (a failure undoes the fast path's claim before the full path claims it again)."""

from __future__ import annotations

import asyncio
import sqlite3

import msgspec

from streamguard import App, Retry, Settings, SqliteStore
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until

N = 2000
KEYS = 40


class Item(msgspec.Struct):
    n: int
    kind: str = "ok"


def test_fast_path_with_a_store_keeps_order_duplicates_transactions_and_failures(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    kinds = {300: "flaky", 700: "poison", 1100: "txn", 1101: "txn"}
    records = [(f"k{i % KEYS}".encode(), msgspec.json.encode(Item(i, kinds.get(i, "ok")))) for i in range(N)]
    produced = produce_all(kafka.bootstrap, topic, records)
    where = {i: po for i, po in enumerate(produced)}  # item n -> (partition, offset)
    [(gp, go)] = produce_all(kafka.bootstrap, topic, [(b"k0", b"\xffnot json")])
    [(cp, co)] = produce_all(kafka.bootstrap, topic, [(b"k1", msgspec.json.encode(Item(-1)))],
                             headers=[("idempotency-key", b"order-1")])

    db = tmp_path / "idem.db"
    done_before = list(range(50, 60))  # completed by an earlier worker (a redelivery after a lost commit)
    with SqliteStore(db) as store:
        for i in done_before:
            p, o = where[i]
            store.claim(f"{topic}/{p}/{o}", "earlier-worker", 30.0)
            store.complete(f"{topic}/{p}/{o}", "earlier-worker")
        with store.transaction("setup", "setup") as conn:
            conn.execute("CREATE TABLE effects (n INTEGER NOT NULL)")

    seen: dict[str, list[int]] = {}
    calls: dict[str, int] = {}
    tasks: set[str] = set()
    app = App(f"fast-store-{topic}", kafka.bootstrap, idempotency=SqliteStore(db),
              settings=Settings(commit_interval=0.2))

    @app.handler(topic, model=Item, retry=Retry(attempts=3, backoff=(0.05, 0.1), jitter=False))
    async def handle(item: Item, ctx) -> None:
        calls[item.kind] = calls.get(item.kind, 0) + 1
        tasks.add(asyncio.current_task().get_name())  # type: ignore[union-attr]
        if item.kind == "flaky" and calls["flaky"] < 3:
            raise ConnectionError("try again")
        if item.kind == "poison":
            raise ValueError("never works")
        if item.kind == "txn":
            with ctx.transaction() as conn:
                conn.execute("INSERT INTO effects (n) VALUES (?)", (item.n,))
        seen.setdefault(ctx.key.decode(), []).append(item.n)

    with running(app) as worker:
        wait_until(lambda: sum(map(len, seen.values())) == N - 1 - len(done_before) + 1, 120,
                   what="everything resolved")
        wait_until(lambda: worker.stats["dead_lettered"] == 1 and worker.stats["quarantined"] == 1, 30)
        stats = dict(worker.stats)
    for k in range(KEYS):
        expected = [i for i in range(k, N, KEYS) if i != 700 and i not in done_before]
        assert seen[f"k{k}"][:len(expected)] == expected, f"per-key order broken, or a message ran twice (k{k})"
    assert seen["k1"][-1] == -1  # the custom-key record, on the full path
    assert stats["duplicate_skipped"] == len(done_before)
    assert len(tasks) < N / 4, "a task per message: the fast path (one task per slot) did not run"
    assert calls["flaky"] == 3 and calls["poison"] == 3 and calls["txn"] == 2

    with sqlite3.connect(db) as conn:
        effects = sorted(n for (n,) in conn.execute("SELECT n FROM effects"))
        rows = dict(conn.execute("SELECT key, status || ':' || deliveries FROM streamguard_idempotency"))
    assert effects == [1100, 1101], "ctx.transaction effects not applied exactly once"

    def key(i: int) -> str:
        return f"{topic}/{where[i][0]}/{where[i][1]}"

    # every record that ran was completed with exactly one delivery counted, the flaky one included: its
    # fast-path claim was undone before the full path claimed it
    for i in range(N):
        if i != 700 and i not in done_before:
            assert rows[key(i)] == "done:1", (i, rows[key(i)])
    assert rows[key(700)] == "released:0"  # dead-lettered: released for a replay, not counted as a crash
    assert rows["order-1"] == "done:1" and f"{topic}/{cp}/{co}" not in rows
    assert f"{topic}/{gp}/{go}" not in rows  # quarantined before any claim
    [dlq] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=20)
    assert msgspec.json.decode(dlq.value(), type=Item).n == 700
    [quar] = consume_n(kafka.bootstrap, f"{topic}.quarantine", 1, timeout=20)
    assert quar.value() == b"\xffnot json"
