"""One consumer in its own process, for the memory benchmark (``benchmarks/run.py`` starts it).

    python -m benchmarks.rss_child {sg|raw} BOOTSTRAP TOPIC SECONDS HANDLER_SLEEP

Consumes TOPIC (a large prefilled backlog) for SECONDS after the first message, then stops, prints one JSON
line (messages processed, seconds, commits, partitions paused) and waits for its standard input to close, so
that the parent can read this process's ``VmHWM`` from ``/proc/<pid>/status`` before it exits.

- ``sg``: a streamguard worker with default ``Settings()`` and an async handler awaiting ``asyncio.sleep(
  HANDLER_SLEEP)`` at the default concurrency (64 per partition, key ordering).
- ``raw``: the raw confluent-kafka loop of the throughput benchmark (``consume(2000, 0.1)``, ``store_offsets``,
  a commit a second, ``queued.max.messages.kbytes=16384``) calling ``time.sleep(HANDLER_SLEEP)`` per message.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from typing import Any


def run_sg(bootstrap: str, topic: str, seconds: float, sleep: float) -> dict[str, Any]:
    from streamguard import App

    app = App(f"bench-rss-sg-{uuid.uuid4().hex[:8]}", bootstrap)
    first = threading.Event()

    @app.handler(topic)
    async def handle(value: bytes) -> None:
        if not first.is_set():
            first.set()
        await asyncio.sleep(sleep)

    worker = app.worker(install_signals=False)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    if not first.wait(60):
        worker.stop(hard=True)
        return {"error": "no message within 60 s", "stats": dict(worker.stats)}
    t0, ok0, commits0 = time.perf_counter(), worker.stats["ok"], worker.stats["commits_ok"]
    max_paused = 0
    while time.perf_counter() - t0 < seconds and thread.is_alive():
        time.sleep(0.25)
        max_paused = max(max_paused, sum(1 for f in list(worker._flows.values()) if f.paused))
    t1, ok1, commits1 = time.perf_counter(), worker.stats["ok"], worker.stats["commits_ok"]
    worker.stop(hard=True)
    thread.join(60)
    return {"processed": ok1 - ok0, "seconds": t1 - t0, "commits": commits1 - commits0,
            "commits_per_s": (commits1 - commits0) / (t1 - t0), "max_paused_partitions": max_paused,
            "stats": dict(worker.stats), "error": repr(errors[0]) if errors else None}


def run_raw(bootstrap: str, topic: str, seconds: float, sleep: float) -> dict[str, Any]:
    from confluent_kafka import Consumer, KafkaError, KafkaException

    commits = [0]

    def on_commit(err: Any, partitions: Any) -> None:
        if err is None:
            commits[0] += 1

    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-rss-raw-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky", "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 16384, "on_commit": on_commit, "log_level": 3,
    })
    c.subscribe([topic])
    count = 0
    t0 = None
    deadline = time.monotonic() + 60
    next_commit = time.monotonic() + 1.0
    try:
        while True:
            now = time.perf_counter()
            if t0 is not None and now - t0 >= seconds:
                break
            if t0 is None and time.monotonic() > deadline:
                return {"error": "no message within 60 s"}
            for m in c.consume(2000, 0.1):  # the worker's default poll_batch, as in run.py
                if m.error() is not None:
                    continue
                if t0 is None:
                    t0 = time.perf_counter()
                if sleep:
                    time.sleep(sleep)
                c.store_offsets(message=m)
                count += 1
            if time.monotonic() >= next_commit:
                try:
                    c.commit(asynchronous=True)
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    if not (isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET):
                        raise
                next_commit = time.monotonic() + 1.0
        t1 = time.perf_counter()
    finally:
        c.close()
    return {"processed": count, "seconds": t1 - t0, "commits": commits[0], "commits_per_s": commits[0] / (t1 - t0),
            "error": None}


def main() -> int:
    kind, bootstrap, topic, seconds, sleep = sys.argv[1:6]
    fn = run_sg if kind == "sg" else run_raw
    try:
        out = fn(bootstrap, topic, float(seconds), float(sleep))
    except Exception as exc:
        out = {"error": repr(exc)}
    print(json.dumps(out), flush=True)
    sys.stdin.read()  # the parent reads VmHWM now, then closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main())
