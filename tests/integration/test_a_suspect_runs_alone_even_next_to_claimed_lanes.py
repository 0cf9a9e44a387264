"""Failure handling: a suspect (a message delivered before that never resolved: the worker died or hung on it)
runs alone, so a crash while it runs is blamed on it only -- also when other partitions are served by the
claimed lane (partition-serial sync handlers with a store): no lane job runs while the suspect does, and the
lanes go on once it is done."""

from __future__ import annotations

import threading
import time

from streamguard import App, Settings, SqliteStore
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until

BUSY = 6000  # partition 0: enough lane work (0.5 ms each) to overlap the suspect's run
AFTER = 300  # partition 1: records behind the suspect


def test_a_suspect_runs_alone_while_the_other_lanes_wait(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    produce_all(kafka.bootstrap, topic, [(b"b", b"busy-%d" % i) for i in range(BUSY)], partition=0)
    produce_all(kafka.bootstrap, topic, [(b"s", b"suspect")] + [(b"a", b"after-%d" % i) for i in range(AFTER)],
                partition=1)
    db = tmp_path / "idem.db"
    with SqliteStore(db) as store:  # a worker died while running offset 0 of partition 1
        store.claim(f"{topic}/1/0", "dead-worker", 0.01)
    time.sleep(0.05)  # its lease is over: the record is a suspect for the next worker

    lock = threading.Lock()
    state = {"solo": False, "suspect_runs": 0, "ran_beside_suspect": 0, "busy": 0, "after": 0}
    app = App(f"solo-{topic}", kafka.bootstrap, idempotency=SqliteStore(db), settings=Settings(commit_interval=0.2))

    @app.handler(topic, ordering="partition", timeout=10.0)
    def handle(value: bytes) -> None:
        if value == b"suspect":
            with lock:
                state["solo"] = True
            time.sleep(1.0)
            with lock:
                state["solo"] = False
                state["suspect_runs"] += 1
            return
        with lock:
            if state["solo"]:
                state["ran_beside_suspect"] += 1
            state["busy" if value.startswith(b"busy") else "after"] += 1
        time.sleep(0.0005)

    with running(app) as worker:
        wait_until(lambda: state["busy"] == BUSY and state["after"] == AFTER and state["suspect_runs"] == 1, 90,
                   what="every record handled")
        stats = dict(worker.stats)
    assert state["ran_beside_suspect"] == 0, "a lane ran next to a suspect: a crash would be blamed on bystanders"
    assert stats["ok"] == BUSY + AFTER + 1
    with SqliteStore(db) as store:
        assert store.peek_many([f"{topic}/1/0"]) == [(True, 2)], "the suspect's second delivery resolved it"
        done = store.peek_many([f"{topic}/0/{i}" for i in range(BUSY)] + [f"{topic}/1/{i}" for i in range(1, AFTER)])
        assert all(d for d, _ in done), "a lane record is not DONE"
