"""Runtime: while one message is stuck, no commit passes it (independent sampler), other partitions go on."""

from __future__ import annotations

import threading
import time

from streamguard import App, Retry, Settings
from streamguard.testing.sampler import CommitSampler
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_commit_never_passes_the_stuck_offset(kafka, new_topic):
    topic = new_topic(partitions=3)
    acked = produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), f"{i}".encode()) for i in range(600)])
    by_value = {i: pos for i, pos in enumerate(acked)}
    stuck_value = next(i for i, (p, off) in by_value.items() if p == 0 and off == 50)
    release = threading.Event()
    handled: set[int] = set()
    app = App(f"stuck-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic, concurrency=16, timeout=None, retry=Retry(attempts=1))
    def handle(value: bytes, ctx) -> None:
        if int(value) == stuck_value:
            release.wait(60)
        handled.add(int(value))

    with CommitSampler(kafka.bootstrap, app.group_id, topic, 3) as sampler, running(app) as worker:
        wait_until(lambda: len(handled) >= 599, 60, what="all but the stuck message")
        wait_until(lambda: sampler.latest.get(1, 0) + sampler.latest.get(2, 0) == 600 - _count(acked, 0),
                   30, what=f"partitions 1 and 2 fully committed {sampler.latest} {dict(worker.stats)} {acked[:3]}")
        time.sleep(1.0)  # give a wrong commit time to show up
        assert sampler.max_committed(0) <= 50, "a commit passed the stuck message"
        release.set()
        wait_until(lambda: sampler.latest.get(0) == _count(acked, 0), 30, what="partition 0 catches up")
    assert worker.stats["ok"] == 600
    assert sampler.errors < 5


def _count(acked: list[tuple[int, int]], partition: int) -> int:
    return sum(1 for p, _ in acked if p == partition)
