"""Failure handling: workers SIGKILLed at random points while writing effects to PostgreSQL through
ctx.transaction() (the inbox pattern), restarted until done: every message's effect exists exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import psycopg
import pytest

from tests.kafka_helpers import produce_all

APP = """
import os, time
from streamguard import App, Settings, PostgresStore
app = App(os.environ["T_GROUP"], os.environ["T_BOOTSTRAP"], idempotency=PostgresStore(os.environ["T_DSN"]),
          settings=Settings(commit_interval=0.3, lease_seconds=2.0))

def handle(value, ctx):
    with ctx.transaction() as conn:
        conn.execute("INSERT INTO effects (id, worker) VALUES (%s, %s)", (value.decode(), ctx.worker_id))
        time.sleep(0.04)

async def handle_async(value, ctx):  # on the async fast path: claims and completions batched per loop tick
    with ctx.transaction() as conn:  # no await inside: the store's pool is shared by every task of the loop
        conn.execute("INSERT INTO effects (id, worker) VALUES (%s, %s)", (value.decode(), ctx.worker_id))
        time.sleep(0.01)

app.handler(os.environ["T_TOPIC"], concurrency=4)(handle_async if os.environ["T_ASYNC"] == "1" else handle)
"""


def _effects(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT id) FROM effects").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async-fast-path"])
def test_exactly_once_effects_under_sigkill(kafka, new_topic, tmp_path, pg_dsn, is_async):
    n = 1000
    topic = new_topic(partitions=3)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (id TEXT NOT NULL, worker TEXT, at TIMESTAMPTZ DEFAULT now())")
    produce_all(kafka.bootstrap, topic, [(f"k{i % 50}".encode(), f"e{i}".encode()) for i in range(n)])
    (tmp_path / "pg_app.py").write_text(textwrap.dedent(APP))
    env = {**os.environ, "T_GROUP": f"pgkill-{topic}", "T_BOOTSTRAP": kafka.bootstrap, "T_TOPIC": topic,
           "T_DSN": pg_dsn, "PYTHONPATH": str(tmp_path), "T_ASYNC": "1" if is_async else "0"}
    rnd = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        proc = subprocess.Popen([sys.executable, "-m", "streamguard.cli", "run", "pg_app:app"], env=env,
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if kills < 6:
                time.sleep(rnd.uniform(1.5, 3.0))
                if _effects(pg_dsn)[1] < n:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    kills += 1
                    continue
            while time.monotonic() < deadline and _effects(pg_dsn)[1] < n:
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            break
        finally:
            proc.kill()
    total, distinct = _effects(pg_dsn)
    assert kills >= 3, "the test did not kill enough workers mid-stream"
    assert distinct == n, f"missing effects: {n - distinct}"
    assert total == n, f"{total - n} duplicate effects"
