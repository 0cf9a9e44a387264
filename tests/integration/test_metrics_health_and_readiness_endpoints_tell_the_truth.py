"""Operations: a worker run by `streamguard run --http-port` serves /metrics, /healthz and /readyz, and
/readyz turns 503 while a partition is stuck (work in flight, nothing resolved for stuck_after seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

from streamguard.testing.local_kafka import free_port
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import wait_until

APP = """
import os, time
from streamguard import App, Settings
app = App(os.environ["T_GROUP"], os.environ["T_BOOTSTRAP"], settings=Settings(commit_interval=0.2, stuck_after=2.0))

@app.handler(os.environ["T_TOPIC"], timeout=None)
def handle(value, ctx):
    if value == b"stuck":
        while not os.path.exists(os.environ["T_RELEASE"]):
            time.sleep(0.05)
"""


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_endpoints(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    produce_all(kafka.bootstrap, topic, [(f"k{i}".encode(), f"m{i}".encode()) for i in range(50)])
    (tmp_path / "ep_app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    release = tmp_path / "release"
    env = {**os.environ, "T_GROUP": f"ep-{topic}", "T_BOOTSTRAP": kafka.bootstrap, "T_TOPIC": topic,
           "T_RELEASE": str(release), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "streamguard.cli", "run", "ep_app:app", "--http-port", str(port)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 60, what="ready")
        wait_until(lambda: 'streamguard_messages_total{outcome="ok"' in _get(f"{base}/metrics")[1]
                   and ' 50.0' in _get(f"{base}/metrics")[1], 30, what="50 messages in the metrics")
        assert _get(f"{base}/healthz")[0] == 200
        metrics = _get(f"{base}/metrics")[1]
        assert "streamguard_commits_total" in metrics and "streamguard_handler_duration_seconds" in metrics
        assert "m1" not in metrics  # no message values in metrics
        produce_all(kafka.bootstrap, topic, [(b"s", b"stuck")], partition=0)
        wait_until(lambda: _get(f"{base}/readyz")[0] == 503, 30, what="/readyz reports the stuck partition")
        _status, body = _get(f"{base}/readyz")
        assert f"{topic}[0]" in body
        assert _get(f"{base}/healthz")[0] == 200  # the poll loop is alive: healthy, not ready
        release.write_text("go")
        wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 30, what="ready again after the release")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            proc.kill()
    assert proc.returncode == 0
