"""Runtime: SIGTERM to `streamguard run` drains in-flight work, commits exactly what was handled, exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from confluent_kafka import Consumer, TopicPartition

from tests.kafka_helpers import produce_all
from tests.runtime_helpers import wait_until

APP = """
import os, time
from streamguard import App, Settings
app = App(os.environ["T_GROUP"], os.environ["T_BOOTSTRAP"], settings=Settings(commit_interval=0.5))
out = open(os.environ["T_OUT"], "a", buffering=1)

@app.handler(os.environ["T_TOPIC"], concurrency=8, ordering="partition")
def handle(value, ctx):
    time.sleep(0.05)
    out.write(f"{ctx.partition} {ctx.offset}\\n")
"""


def test_sigterm_drains_and_commits(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), b"x") for i in range(400)])
    (tmp_path / "drain_app.py").write_text(textwrap.dedent(APP))
    out = tmp_path / "handled.txt"
    env = {**os.environ, "T_GROUP": f"drain-{topic}", "T_BOOTSTRAP": kafka.bootstrap, "T_TOPIC": topic,
           "T_OUT": str(out), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "streamguard.cli", "run", "drain_app:app"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 20, 60, what="progress")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = proc.wait(60)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    logs = proc.stdout.read() if proc.stdout else ""
    assert code == 0, logs
    assert took < 30, took
    handled: dict[int, set[int]] = {0: set(), 1: set()}
    for line in out.read_text().splitlines():
        p, o = map(int, line.split())
        handled[p].add(o)
    reader = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"drain-{topic}"})
    committed = {tp.partition: tp.offset for tp in reader.committed([TopicPartition(topic, 0),
                                                                      TopicPartition(topic, 1)], timeout=10)}
    reader.close()
    for p in (0, 1):
        if not handled[p]:
            continue
        # everything handled was contiguous from 0 and the commit sits right after it: nothing left in flight
        assert handled[p] == set(range(len(handled[p]))), f"partition {p} has holes"
        assert committed[p] == len(handled[p]), (p, committed[p], len(handled[p]), logs[-2000:])


SLOW_APP = """
import os, time
from streamguard import App, Settings
app = App(os.environ["T_GROUP"], os.environ["T_BOOTSTRAP"], settings=Settings(commit_interval=0.5))
out = open(os.environ["T_OUT"], "a", buffering=1)

@app.handler(os.environ["T_TOPIC"], concurrency=4, ordering="partition", timeout=None)
async def handle(value, ctx):
    import asyncio
    await asyncio.sleep(0.5 if ctx.offset < 3 else 20)
    out.write(f"{ctx.partition} {ctx.offset}\\n")
"""


def test_second_signal_leaves_at_once_without_committing_unresolved_work(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), b"x") for i in range(10)])
    (tmp_path / "slow_app.py").write_text(textwrap.dedent(SLOW_APP))
    out = tmp_path / "handled.txt"
    env = {**os.environ, "T_GROUP": f"twice-{topic}", "T_BOOTSTRAP": kafka.bootstrap, "T_TOPIC": topic,
           "T_OUT": str(out), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "streamguard.cli", "run", "slow_app:app"], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, 60, what="first messages")
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the first signal drains: offset 3 would take 20 s
        assert proc.poll() is None, "the first signal must drain, not leave"
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(20)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    assert took < 10, took
    reader = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"twice-{topic}"})
    [tp] = reader.committed([TopicPartition(topic, 0)], timeout=10)
    reader.close()
    assert tp.offset == 3, f"committed {tp.offset}: only offsets 0-2 were resolved"
