"""Runtime + failure handling: a partition-serial sync handler with an idempotency store runs in the claimed
lane (a chunk of keys claimed in one transaction, completed in one more) and still keeps offset order, skips
keys already DONE without calling the handler, applies ctx.transaction effects once, and sends failures,
timeouts, undecodable records and custom-key records down the full path -- without a key ever counting a
delivery it did not get (the lane undoes the claims it did not finish)."""

from __future__ import annotations

import sqlite3
import threading
import time

import msgspec

from streamguard import App, Retry, Settings, SqliteStore
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


class Item(msgspec.Struct):
    n: int
    kind: str = "ok"


def test_claimed_lane_order_duplicates_transactions_and_failures(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    records: list[tuple[bytes | None, bytes]] = []
    for i in range(1500):
        kind = {300: "flaky", 700: "poison", 1120: "slow"}.get(i, "ok")
        records.append((f"k{i}".encode(), msgspec.json.encode(Item(i, kind))))
    records.insert(900, (b"garbage", b"\xffnot json"))  # offset 900; the items from 900 on sit one offset later
    produce_all(kafka.bootstrap, topic, records[:1000], partition=0)
    produce_all(kafka.bootstrap, topic, [records[1000]], headers=[("idempotency-key", b"order-999")], partition=0)
    produce_all(kafka.bootstrap, topic, records[1001:], partition=0)
    produce_all(kafka.bootstrap, topic, [(b"x", msgspec.json.encode(Item(i))) for i in range(400)], partition=1)

    db = tmp_path / "idem.db"
    store = SqliteStore(db)
    with store:  # offsets 50..59 of partition 0 were completed before (a redelivery after a lost commit)
        for off in range(50, 60):
            store.claim(f"{topic}/0/{off}", "earlier-worker", 30.0)
            store.complete(f"{topic}/0/{off}", "earlier-worker")
        with store.transaction("setup", "setup") as conn:
            conn.execute("CREATE TABLE effects (n INTEGER NOT NULL)")

    seen: dict[int, list[int]] = {0: [], 1: []}
    calls: dict[str, int] = {}
    lock = threading.Lock()
    app = App(f"claimed-{topic}", kafka.bootstrap, idempotency=SqliteStore(db),
              settings=Settings(commit_interval=0.2))

    @app.handler(topic, model=Item, ordering="partition", timeout=1.0,
                 retry=Retry(attempts=3, backoff=(0.05, 0.1), jitter=False))
    def handle(item: Item, ctx) -> None:
        with lock:
            calls[item.kind] = calls.get(item.kind, 0) + 1
        if item.kind == "flaky" and calls["flaky"] < 3:
            raise ConnectionError("try again")
        if item.kind == "poison":
            raise ValueError("never works")
        if item.kind == "slow" and calls["slow"] == 1:
            time.sleep(2.5)  # past the 1 s timeout once (mid-chunk); the retry succeeds
            return
        if ctx.partition == 1:
            with ctx.transaction() as conn:
                conn.execute("INSERT INTO effects (n) VALUES (?)", (item.n,))
        with lock:
            seen[ctx.partition].append(item.n)

    with running(app) as worker:
        wait_until(lambda: len(seen[0]) == 1489 and len(seen[1]) == 400, 120, what="everything resolved")
        wait_until(lambda: worker.stats["dead_lettered"] == 1 and worker.stats["quarantined"] == 1, 30)
    expected0 = [i for i in range(1500) if i != 700 and not 50 <= i < 60]
    assert seen[0] == expected0, "offset order broken, or a message handled twice, in the claimed lane"
    assert seen[1] == list(range(400))
    assert worker.stats["duplicate_skipped"] == 10  # the keys DONE before: no handler call
    assert calls["flaky"] == 3 and calls["slow"] == 2 and calls["poison"] == 3

    with sqlite3.connect(db) as conn:
        effects = [n for (n,) in conn.execute("SELECT n FROM effects ORDER BY rowid")]
        rows = dict(conn.execute("SELECT key, status || ':' || deliveries FROM streamguard_idempotency"))
        chunk_rows = conn.execute("SELECT count(*) FROM streamguard_ranges").fetchone()[0]
    assert effects == list(range(400)), "ctx.transaction effects not applied exactly once"
    assert chunk_rows > 0, "no chunk was kept as a range row: the path under test did not run"
    reader = SqliteStore(db)
    reader.open()

    def state(offset: int, partition: int = 0) -> tuple[bool, int]:
        """(done?, deliveries) as every per-key call sees it, whether the key has a row or sits in a range."""
        return reader.peek_many([f"{topic}/{partition}/{offset}"])[0]

    # every message handled in the lane or after it was completed with exactly one delivery counted: the
    # lane undid the claims of the flaky message, the timed-out one and the rest of their chunks
    for offset in (0, 299, 300, 301, 1119, 1121, 1122, 1199, 1500):  # item n sits at offset n + (n >= 900)
        assert state(offset) == (True, 1), (offset, state(offset))
    assert state(1121) == (True, 1)  # the slow item (n=1120)
    assert rows["order-999"] == "done:1"  # the custom key took the full path
    assert rows[f"{topic}/0/700"].startswith("released:")  # dead-lettered: released for a replay
    assert f"{topic}/0/900" not in rows and state(900) == (False, 0)  # quarantined before any claim
    assert all(state(o, 1) == (True, 1) for o in range(400))
    reader.close()
    [dlq] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=20)
    assert msgspec.json.decode(dlq.value(), type=Item).n == 700
    [quar] = consume_n(kafka.bootstrap, f"{topic}.quarantine", 1, timeout=20)
    assert quar.value() == b"\xffnot json"
