"""A deliberately wrong worker for the battery's first negative control: it commits *before* it processes.

``python -m streamguard.chaos.bad_worker`` (configured by the same ``SG_CHAOS_*`` environment as
:mod:`streamguard.chaos.battery_app`): a raw ``confluent_kafka`` consumer that fetches a batch, commits the
offsets after it synchronously, and only then applies each message's effect, slowly. A SIGKILL between the
commit and the effects loses those messages; the checker must report them as lost and the commits as past
unresolved messages. It is not streamguard's runtime and must never be used as an example.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from typing import Any


def main() -> int:
    from confluent_kafka import Consumer, TopicPartition

    from streamguard.chaos.workload import INSERT_EFFECT, append_jsonl

    run_dir = os.environ.get("SG_CHAOS_DIR", ".")
    topic = os.environ["SG_CHAOS_TOPIC"]
    worker = f"bad-{os.getpid()}"
    fd = os.open(os.path.join(run_dir, "deliveries.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    db = sqlite3.connect(os.environ.get("SG_CHAOS_DB", os.path.join(run_dir, "chaos.db")), timeout=30,
                         isolation_level=None)
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    consumer = Consumer({"bootstrap.servers": os.environ["STREAMGUARD_BOOTSTRAP"],
                         "group.id": os.environ.get("SG_CHAOS_GROUP", f"chaos-{topic}"),
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "session.timeout.ms": int(os.environ.get("SG_CHAOS_SESSION_MS", "6000")),
                         "log_level": 0})
    consumer.subscribe([topic])
    try:
        while not stop:
            batch = [m for m in consumer.consume(50, 0.2) if m.error() is None]
            if not batch:
                continue
            ends: dict[int, int] = {}
            for m in batch:
                p, o = int(m.partition() or 0), int(m.offset() or 0)
                ends[p] = max(ends.get(p, 0), o + 1)
            consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in ends.items()], asynchronous=False)
            for m in batch:  # WRONG on purpose: the commit above already covers these
                import orjson

                try:
                    body = orjson.loads(m.value() or b"")
                except orjson.JSONDecodeError:
                    continue
                append_jsonl(fd, {"id": body["id"], "partition": m.partition(), "offset": m.offset(),
                                  "worker": worker, "t": time.time()})
                time.sleep(0.01)
                raw_key: Any = m.key() or b""
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                db.execute(INSERT_EFFECT, (body["id"], key, m.partition(), m.offset(), worker, time.time()))
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
