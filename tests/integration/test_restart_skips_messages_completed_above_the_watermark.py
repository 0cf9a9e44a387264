"""Runtime: completed offsets above the watermark travel in the commit metadata; a restart skips them."""

from __future__ import annotations

import threading
import time

from streamguard import App, Retry, Settings
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


def test_restart_does_not_rerun_completed_messages(kafka, new_topic):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), f"{i}".encode()) for i in range(200)])
    calls: dict[int, int] = {}
    lock = threading.Lock()
    block = threading.Event()
    app = App(f"restart-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2, shutdown_timeout=1.0,
                                                                revoke_timeout=1.0))

    @app.handler(topic, concurrency=32, timeout=None, retry=Retry(attempts=1))
    def handle(value: bytes, ctx) -> None:
        v = int(value)
        if v == 10 and not block.is_set():
            block.wait(30)  # holds offset 10 unresolved through the first worker's shutdown
            raise RuntimeError("interrupted")  # its late failure is fenced: that worker is gone
        with lock:
            calls[v] = calls.get(v, 0) + 1

    with running(app):
        wait_until(lambda: len(calls) >= 199, 60, what="all but offset 10")
        time.sleep(0.6)  # a commit with metadata goes out
    first = dict(calls)
    assert 10 not in first
    block.set()
    with running(app):
        wait_until(lambda: 10 in calls, 60, what="offset 10 handled after restart")
        time.sleep(0.5)
    reruns = {v: c for v, c in calls.items() if c > 1}
    assert reruns == {}, f"completed messages ran again after restart: {sorted(reruns)[:10]}"
    assert set(calls) == set(range(200))
