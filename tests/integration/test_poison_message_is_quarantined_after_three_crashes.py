"""Failure handling: a message that kills its worker (os._exit) is quarantined after max_deliveries=3
crashes, the handler is not invoked for it again, and every other message is processed -- on the per-message
path (key ordering), in the claimed lane (ordering="partition": a crash leaves the rest of its chunk claimed,
and those suspects must not be blamed for it) and on the async fast path (claims batched per loop tick)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.kafka_helpers import consume_n, produce_all

APP = """
import os
from streamguard import App, Settings, SqliteStore
app = App(os.environ["T_GROUP"], os.environ["T_BOOTSTRAP"], idempotency=SqliteStore(os.environ["T_DB"]),
          settings=Settings(commit_interval=0.2, lease_seconds=1.0))
log = open(os.environ["T_OUT"], "a", buffering=1)

def handle(value, ctx):
    log.write(value.decode() + "\\n")
    if value == b"crash":
        os._exit(17)

async def handle_async(value, ctx):
    handle(value, ctx)

app.handler(os.environ["T_TOPIC"], ordering=os.environ["T_ORDERING"], concurrency=int(os.environ["T_CONC"]),
            max_deliveries=3)(handle_async if os.environ["T_ASYNC"] == "1" else handle)
"""


@pytest.mark.parametrize(("ordering", "is_async"), [("key", False), ("partition", False), ("key", True)],
                         ids=["per-message", "claimed-lane", "async-fast-path"])
def test_crash_poison_is_quarantined(kafka, new_topic, tmp_path, ordering, is_async):
    topic = new_topic(partitions=1)
    records = [(f"k{i}".encode(), f"m{i}".encode()) for i in range(40)]
    records.insert(10, (b"kx", b"crash"))
    produce_all(kafka.bootstrap, topic, records)
    (tmp_path / "crash_app.py").write_text(textwrap.dedent(APP))
    out = tmp_path / "calls.txt"
    env = {**os.environ, "T_GROUP": f"crash-{topic}", "T_BOOTSTRAP": kafka.bootstrap, "T_TOPIC": topic,
           "T_OUT": str(out), "T_DB": str(tmp_path / "idem.db"), "PYTHONPATH": str(tmp_path),
           "T_ORDERING": ordering, "T_CONC": "8" if ordering == "key" else "1", "T_ASYNC": "1" if is_async else "0"}
    crashes = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:  # the supervisor's job, done by hand: restart until it stops crashing
        proc = subprocess.Popen([sys.executable, "-m", "streamguard.cli", "run", "crash_app:app"], env=env,
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(30)
            break
        assert code == 17, f"worker exited with {code}"
        crashes += 1
        assert crashes <= 5, "crash loop not stopped"
    calls = out.read_text().splitlines()
    assert calls.count("crash") == 3, calls
    assert crashes == 3
    assert {f"m{i}" for i in range(40)} <= set(calls)
    [rec] = consume_n(kafka.bootstrap, f"{topic}.quarantine", 1, timeout=30)
    assert rec.value() == b"crash"
    assert dict(rec.headers())["streamguard.error.type"].endswith(b"CrashLoopDetected")
