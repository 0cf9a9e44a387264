"""`make demo`: the orders pipeline on a local Apache Kafka under injected trouble.

Starts a real broker, produces a workload with transient payment errors, orders that can never succeed,
undecodable bytes, duplicate deliveries and a payment outage, runs the worker with its /metrics endpoint,
shows live progress and ends with a summary read back from Kafka and the metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import msgspec


def main() -> int:
    from confluent_kafka import Producer

    from streamguard.testing import kafka_backend
    from streamguard.testing.pytest_plugin import create_topic

    t0 = time.monotonic()
    print("starting a local Apache Kafka ...", flush=True)
    backend = kafka_backend(1)
    try:
        os.environ["STREAMGUARD_BOOTSTRAP"] = backend.bootstrap
        os.environ["ORDERS_STATE"] = tempfile.mkdtemp(prefix="streamguard-demo-")
        print(f"Kafka up at {backend.bootstrap} in {time.monotonic() - t0:.1f}s", flush=True)
        create_topic(backend.bootstrap, "orders", partitions=3)
        from examples import orders

        orders.app.brokers = backend.bootstrap
        n = 3000
        producer = Producer({"bootstrap.servers": backend.bootstrap, "acks": "all", "enable.idempotence": True})
        plan = {"orders": 0, "bad_amount": 0, "undecodable": 0, "duplicates": 0}
        for i in range(n):
            amount = -1 if i % 500 == 7 else 100 + i
            o = orders.Order(order_id=f"o-{i}", customer=f"c-{i % 97}", amount_cents=amount)
            producer.produce("orders", key=o.customer.encode(), value=msgspec.json.encode(o))
            plan["orders"] += 1
            plan["bad_amount"] += amount <= 0
            if i % 400 == 3:
                producer.produce("orders", key=o.customer.encode(), value=b"\x00\x9f garbage, not an order")
                plan["undecodable"] += 1
            if i % 300 == 5:
                producer.produce("orders", key=o.customer.encode(), value=msgspec.json.encode(o))
                plan["duplicates"] += 1
            producer.poll(0)
        producer.flush(30)
        total = sum(plan.values()) - plan["bad_amount"]
        print(f"produced {total} records: {plan}", flush=True)

        worker = orders.app.worker(install_signals=False)
        from streamguard.observability.server import HealthServer

        server = HealthServer(worker.metrics.registry, "127.0.0.1", 0, healthy=worker.healthy, ready=worker.ready)
        server.start()
        print(f"metrics: {server.url}/metrics  health: {server.url}/healthz  ready: {server.url}/readyz")
        runner = threading.Thread(target=worker.run, daemon=True)
        runner.start()
        started = time.monotonic()
        outage_done = False
        keys = ("ok", "retried", "dead_lettered", "quarantined", "duplicate_skipped")
        while True:
            time.sleep(1.0)
            s = worker.stats
            resolved = sum(s[k] for k in keys)
            elapsed = time.monotonic() - started
            if not outage_done and resolved > total // 3 and not orders.gateway.down.is_set():
                print(">>> injecting a payment outage for 4 s", flush=True)
                orders.gateway.down.set()
                threading.Timer(4.0, orders.gateway.down.clear).start()
                outage_done = True
            print(f"[{elapsed:5.1f}s] resolved {resolved}/{total}  ok={s['ok']} retried={s['retried']} "
                  f"retries={s['retries']} dlq={s['dead_lettered']} quarantined={s['quarantined']} "
                  f"duplicates_skipped={s['duplicate_skipped']} breaker={orders.payments.state} "
                  f"breaker_waits={s['breaker_waits']}", flush=True)
            if resolved >= total or elapsed > 180:
                break
        worker.stop()
        runner.join(60)
        metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
        server.stop()
        s = worker.stats
        print("\n=== summary ===")
        print(f"  processed (first try)      {s['ok']}")
        print(f"  processed after retries    {s['retried']}   (retries scheduled: {s['retries']})")
        print(f"  dead-lettered              {s['dead_lettered']}   "
              f"(orders.dlq: {plan['bad_amount']} bad amounts + retries exhausted)")
        print(f"  quarantined                {s['quarantined']}   (orders.quarantine; expected "
              f"{plan['undecodable']})")
        print(f"  duplicates skipped         {s['duplicate_skipped']}   (expected {plan['duplicates']})")
        print(f"  waits on the open breaker  {s['breaker_waits']}")
        print(f"  time                       {time.monotonic() - started:.1f}s")
        print("  metrics sample:")
        for line in metrics.splitlines():
            if line.startswith(("streamguard_messages_total", "streamguard_commits_total",
                                "streamguard_breaker_transitions_total")):
                print(f"    {line}")
        from collections import Counter

        from confluent_kafka import Consumer

        from streamguard.core.envelope import parse_envelope

        reader = Consumer({"bootstrap.servers": backend.bootstrap, "group.id": "demo-dlq-reader",
                           "auto.offset.reset": "earliest"})
        reader.subscribe(["orders.dlq"])
        kinds: Counter[str] = Counter()
        deadline = time.monotonic() + 20
        while sum(kinds.values()) < s["dead_lettered"] and time.monotonic() < deadline:
            for m in reader.consume(100, 0.5):
                if m.error() is None:
                    kinds[parse_envelope(m.headers()).error_type or "?"] += 1
        reader.close()
        print(f"  DLQ read back by error type: {dict(kinds)}")
        ok = (kinds["streamguard.errors.PermanentFailure"] == plan["bad_amount"]
              and sum(kinds.values()) == s["dead_lettered"] and s["quarantined"] == plan["undecodable"]
              and s["duplicate_skipped"] == plan["duplicates"] and resolved >= total)
        print("\n=== fixing the cause (refunds enabled) and replaying the DLQ ===", flush=True)
        orders.gateway.refunds_enabled = True
        worker2 = orders.app.worker(install_signals=False)
        runner2 = threading.Thread(target=worker2.run, daemon=True)
        runner2.start()
        worker2.wait_ready(60)
        replay = subprocess.run([sys.executable, "-m", "streamguard.cli", "dlq", "replay", "orders.dlq", "--yes",
                                 "--bootstrap", backend.bootstrap], capture_output=True, text=True, timeout=300)
        print(replay.stdout.rstrip())
        deadline = time.monotonic() + 60
        while worker2.stats["ok"] + worker2.stats["retried"] < s["dead_lettered"] and time.monotonic() < deadline:
            time.sleep(0.5)
        worker2.stop()
        runner2.join(60)
        replayed_ok = worker2.stats["ok"] + worker2.stats["retried"]
        print(f"  replayed and processed after the fix: {replayed_ok} of {s['dead_lettered']} "
              f"(dead-lettered again: {worker2.stats['dead_lettered']})")
        ok = ok and replay.returncode == 0 and replayed_ok == s["dead_lettered"]
        print("demo", "finished: every record accounted for" if ok else "finished WITH DISCREPANCIES")
        return 0 if ok else 1
    finally:
        backend.stop()


if __name__ == "__main__":
    sys.exit(main())
