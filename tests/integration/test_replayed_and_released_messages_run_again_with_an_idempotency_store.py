"""Ops + idempotency: with an idempotency store, a dead-lettered message replayed after the fix runs the
handler (dead-lettering releases its key instead of marking it done), and exactly once even when the
record is replayed twice."""

from __future__ import annotations

import threading

from streamguard import App, Settings, SqliteStore
from streamguard.errors import PermanentFailure
from tests.cli_helpers import run_cli
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_replay_runs_the_fixed_handler_once(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(b"a", b"order-1"), (b"b", b"order-2")],
                headers=[("idempotency-key", b"same-key-style")])
    produce_all(kafka.bootstrap, topic, [(b"c", b"order-3")], headers=[("idempotency-key", b"order-3")])
    fixed = threading.Event()
    effects: list[bytes] = []
    app = App(f"replay-idem-{topic}", kafka.bootstrap, idempotency=SqliteStore(tmp_path / "idem.db"),
              settings=Settings(commit_interval=0.2))

    @app.handler(topic, key=lambda value, ctx: value.decode())
    def handle(value: bytes, ctx) -> None:
        if value == b"order-3" and not fixed.is_set():
            raise PermanentFailure("price missing")
        effects.append(value)

    with running(app) as worker:
        wait_until(lambda: worker.stats["dead_lettered"] == 1 and len(effects) == 2, 60)
        fixed.set()
        res = run_cli(kafka.bootstrap, "dlq", "replay", f"{topic}.dlq", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
        wait_until(lambda: b"order-3" in effects, 60, what="the replayed message handled by the fixed handler")
        # a second replay under a fresh replay group delivers the record again: the store skips it
        res = run_cli(kafka.bootstrap, "dlq", "replay", f"{topic}.dlq", "--yes", "--group", "second-replay")
        assert res.returncode == 0, res.stdout + res.stderr
        wait_until(lambda: worker.stats["duplicate_skipped"] == 1, 60, what="the second copy skipped")
    assert effects.count(b"order-3") == 1
