"""Supervisor: configuration errors end `streamguard run --workers N` with exit 2 and a clear message, instead
of a restart loop: a bad import path and an unreachable broker (found by the supervisor before any worker
starts; the broker within the startup bound) and an unknown topic (found by the workers: the supervisor stops
the others and exits 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from streamguard.testing.local_kafka import free_port

APP = """
import os
from streamguard import App
app = App("cfg-errors", os.environ["T_BOOTSTRAP"])
not_an_app = 42

@app.handler(os.environ["T_TOPIC"])
def handle(value):
    pass
"""


def run_cli(tmp_path, *args, env_extra=None, timeout=60):
    (tmp_path / "cfg_app.py").write_text(textwrap.dedent(APP))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "T_BOOTSTRAP": "127.0.0.1:1", "T_TOPIC": "unused",
           **(env_extra or {})}
    env.pop("STREAMGUARD_BOOTSTRAP", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streamguard.cli", "run", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def test_bad_import_path_fails_fast_without_starting_workers(tmp_path):
    code, output, _ = run_cli(tmp_path, "no_such_module:app", "--workers", "3")
    assert code == 2, output
    assert "cannot import 'no_such_module'" in output
    assert "started (pid" not in output  # the supervisor checked before starting anyone

    code, output, _ = run_cli(tmp_path, "cfg_app:not_an_app", "--workers", "3")
    assert code == 2, output
    assert "'cfg_app:not_an_app' is not a streamguard App (found int)" in output
    assert "started (pid" not in output


def test_unknown_topic_stops_all_workers_with_exit_2(kafka, tmp_path):
    missing = f"no-such-topic-{os.getpid()}-{time.monotonic_ns()}"
    code, output, _ = run_cli(tmp_path, "cfg_app:app", "--workers", "3",
                              env_extra={"T_BOOTSTRAP": kafka.bootstrap, "T_TOPIC": missing}, timeout=90)
    assert code == 2, output
    assert missing in output  # the worker's own error message, through the inherited stderr
    assert "topic(s) not found" in output
    assert "exited with 2 (configuration error); stopping all workers" in output
    assert "restarting in" not in output


def test_unreachable_broker_exits_2_within_the_startup_bound(tmp_path):
    closed = free_port()  # nothing listens there
    code, output, took = run_cli(tmp_path, "cfg_app:app", "--workers", "2",
                                 env_extra={"T_BOOTSTRAP": f"127.0.0.1:{closed}", "STREAMGUARD_STARTUP_TIMEOUT": "3"})
    assert code == 2, output
    assert f"no broker reachable at 127.0.0.1:{closed} within 3s" in output
    assert "restarting in" not in output
    assert took < 30, took  # 3 s startup bound + process start-up, far from the 30 s default
