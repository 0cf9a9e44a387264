"""Failure handling: with retry topics, a failing message waits in `<topic>.retry.<n>` until its not-before
time while its source partition moves on; the gaps are honoured; when retries run out it is dead-lettered
with the ORIGINAL coordinates."""

from __future__ import annotations

import threading
import time

from streamguard import App, Retry, Settings
from streamguard.core.envelope import parse_envelope
from streamguard.testing.sampler import CommitSampler
from tests.kafka_helpers import consume_n, produce_all
from tests.runtime_helpers import running, wait_until


def test_retry_topics(kafka, new_topic):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(b"a", b"flaky"), (b"b", b"doomed")] +
                [(f"k{i}".encode(), f"ok-{i}".encode()) for i in range(20)])
    calls: dict[bytes, list[float]] = {}
    lock = threading.Lock()
    app = App(f"rt-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, retry_topics=(1.0, 2.0), retry=Retry(attempts=3, backoff=(0.01, 0.02), jitter=False))
    def handle(value: bytes, ctx) -> None:
        with lock:
            calls.setdefault(value, []).append(time.monotonic())
        if value == b"flaky" and len(calls[value]) < 3:
            raise ConnectionError("not yet")
        if value == b"doomed":
            raise ConnectionError("never")

    with CommitSampler(kafka.bootstrap, app.group_id, topic, 1) as sampler, running(app) as worker:
        wait_until(lambda: sum(1 for v in calls if v.startswith(b"ok")) == 20, 30, what="the rest of the partition")
        # the source partition is fully committed while both failing messages still wait in retry topics
        wait_until(lambda: sampler.latest.get(0) == 22, 20, what="source commit moves past the failures")
        assert len(calls[b"flaky"]) < 3
        wait_until(lambda: len(calls.get(b"flaky", [])) == 3 and worker.stats["dead_lettered"] == 1, 60)
    flaky = calls[b"flaky"]
    assert flaky[1] - flaky[0] >= 0.9 and flaky[2] - flaky[1] >= 1.9, flaky
    assert len(calls[b"doomed"]) == 3
    [rec] = consume_n(kafka.bootstrap, f"{topic}.dlq", 1, timeout=30)
    env = parse_envelope(rec.headers())
    assert rec.value() == b"doomed"
    assert (env.source_topic, env.source_partition, env.source_offset) == (topic, 0, 1)
    assert env.attempts == 3
    assert worker.stats["sent_to_retry_topic"] == 4  # flaky: 2, doomed: 2
