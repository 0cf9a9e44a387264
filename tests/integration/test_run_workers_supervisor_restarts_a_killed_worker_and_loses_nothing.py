"""Supervisor: `streamguard run --workers 3` shares a 6-partition topic among 3 worker processes; a worker
SIGKILLed mid-run is restarted (with its exit logged); SIGTERM drains them all and everything exits 0;
every one of the 3000 messages was handled at least once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.kafka_helpers import produce_all
from tests.runtime_helpers import wait_until

APP = """
import os, time
from streamguard import App, Settings
app = App(os.environ["T_GROUP"], os.environ["T_BOOTSTRAP"], settings=Settings(commit_interval=0.5))
fd = os.open(os.environ["T_OUT"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

@app.handler(os.environ["T_TOPIC"], ordering="partition")
def handle(value, ctx):
    time.sleep(0.01)
    os.write(fd, f"{ctx.partition} {ctx.offset}\\n".encode())
"""

N = 3000


def children(pid: int) -> set[int]:
    """Child pids of ``pid`` (pgrep -P; no psutil)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def handled(out: Path) -> set[tuple[int, int]]:
    if not out.exists():
        return set()
    pairs = set()
    for line in out.read_text().splitlines():
        p, o = line.split()
        pairs.add((int(p), int(o)))
    return pairs


def test_run_workers_restarts_killed_worker_and_loses_nothing(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=6)
    produced = set(produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), b"x") for i in range(N)]))
    assert len(produced) == N
    assert {p for p, _ in produced} == set(range(6))
    (tmp_path / "workers_app.py").write_text(textwrap.dedent(APP))
    out = tmp_path / "handled.txt"
    log_path = tmp_path / "supervisor.log"
    env = {**os.environ, "T_GROUP": f"workers-{topic}", "T_BOOTSTRAP": kafka.bootstrap, "T_TOPIC": topic,
           "T_OUT": str(out), "PYTHONPATH": str(tmp_path)}
    with log_path.open("w") as log_file:
        sup = subprocess.Popen([sys.executable, "-m", "streamguard.cli", "run", "workers_app:app", "--workers", "3"],
                               env=env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(children(sup.pid)) == 3, 30, what="3 worker processes")
        first = children(sup.pid)
        wait_until(lambda: len(handled(out)) >= 300, 90, what="progress before the kill")
        assert len(handled(out)) < N - 300, "workload too fast to kill a worker mid-run"
        victim = sorted(first)[1]
        os.kill(victim, signal.SIGKILL)

        def restarted() -> bool:
            now = children(sup.pid)
            return len(now) == 3 and victim not in now

        wait_until(restarted, 30, what="the killed worker to be replaced")
        seen = first | children(sup.pid)
        log_text = log_path.read_text()
        assert re.search(rf"worker \d \(pid {victim}\) exited with -9; restarting in 0\.5s", log_text), log_text[-3000:]
        assert first - {victim} <= children(sup.pid), "the other workers were restarted too"

        wait_until(lambda: handled(out) >= produced, 180, what="every message handled")
        sup.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = sup.wait(60)
        took = time.monotonic() - t0
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait(10)
    log_text = log_path.read_text()
    print(log_text[-3000:])
    assert code == 0, log_text[-4000:]
    assert took < 45, took
    assert len(re.findall(r"worker \d \(pid \d+\) exited with 0\n", log_text)) == 3, log_text[-4000:]
    assert "1 restart(s)" in log_text, log_text[-3000:]
    assert handled(out) == produced
    for pid in seen:  # every worker ever started has exited (and was reaped by the supervisor)
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} left behind"
