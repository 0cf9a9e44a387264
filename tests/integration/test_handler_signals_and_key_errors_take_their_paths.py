"""Failure handling: the handler's own signals and errors each take their path — Quarantine() goes to
quarantine, RetryLater(d) waits at least d, a failing idempotency-key function quarantines with zero
attempts, and a sync handler past its timeout (outside the serial lane) is a failed attempt."""

from __future__ import annotations

import threading
import time

from streamguard import App, Quarantine, Retry, RetryLater, Settings, SqliteStore
from streamguard.core.envelope import parse_envelope
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


def _key(value: bytes, ctx) -> str:
    if value == b"no-key":
        raise KeyError("order_id")
    return value.decode()


def test_signals_and_errors(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(b"a", b"needs-review"), (b"b", b"later"), (b"c", b"no-key"),
                                         (b"d", b"hangs"), (b"e", b"fine")])
    calls: dict[bytes, list[float]] = {}
    lock = threading.Lock()
    app = App(f"sig-{topic}", kafka.bootstrap, idempotency=SqliteStore(tmp_path / "s.db"),
              settings=Settings(commit_interval=0.2))

    @app.handler(topic, key=_key, timeout=0.5, retry=Retry(attempts=2, backoff=(0.05, 0.1), jitter=False))
    def handle(value: bytes, ctx) -> None:
        with lock:
            calls.setdefault(value, []).append(time.monotonic())
        if value == b"needs-review":
            raise Quarantine("a person must look at this")
        if value == b"later" and len(calls[value]) == 1:
            raise RetryLater(0.8, "upstream asked us to come back")
        if value == b"hangs":
            time.sleep(1.5)

    with running(app) as worker:
        wait_until(lambda: worker.stats["quarantined"] == 2 and worker.stats["dead_lettered"] == 1
                   and b"fine" in calls and len(calls.get(b"later", [])) == 2, 30)
    later = calls[b"later"]
    assert later[1] - later[0] >= 0.75, later
    assert b"no-key" not in calls
    assert len(calls[b"hangs"]) == 2
    quarantined = {r.value(): parse_envelope(r.headers()) for r in
                   consume_n(kafka.bootstrap, f"{topic}.quarantine", 2, timeout=20)}
    assert quarantined[b"needs-review"].error_type == "streamguard.errors.Quarantine"
    assert quarantined[b"needs-review"].attempts == 1
    assert quarantined[b"no-key"].error_type == "KeyError" and quarantined[b"no-key"].attempts == 0
    [dlq] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=20)
    assert dlq.value() == b"hangs"
    assert parse_envelope(dlq.headers()).error_type == "streamguard.errors.HandlerTimeout"
