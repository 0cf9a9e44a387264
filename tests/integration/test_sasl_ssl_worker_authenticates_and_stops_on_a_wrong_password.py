"""Security: against the launcher's SASL_SSL (SCRAM-SHA-512) listener, `streamguard run` with the right
credentials consumes a topic; with a wrong password (set through STREAMGUARD_KAFKA__SASL_PASSWORD, which beats
the App's code) it stops within seconds with a clear authentication error and exit code 3, alone or
supervised, and never prints a password."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamguard import App
from streamguard.app import Settings
from streamguard.errors import AuthenticationFailed
from streamguard.testing.local_kafka import LocalKafkaCluster
from streamguard.testing.pytest_plugin import create_topic
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until

APP = """
import json, os
from streamguard import App, Settings
app = App(os.environ["T_GROUP"], os.environ["T_BOOTSTRAP"], kafka=json.loads(os.environ["T_SECURITY"]),
          settings=Settings(commit_interval=0.3))
out = open(os.environ["T_OUT"], "a", buffering=1)

@app.handler(os.environ["T_TOPIC"])
def handle(value, ctx):
    out.write(f"{ctx.partition} {ctx.offset}\\n")
"""

WRONG = "wrong-pw-0xDEADBEEF"


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[LocalKafkaCluster]:
    cluster = LocalKafkaCluster(1, security="sasl_ssl").start()
    try:
        yield cluster
    finally:
        cluster.stop()


def start(cluster: LocalKafkaCluster, tmp_path, topic: str, *args: str, env_extra=None) -> subprocess.Popen[str]:
    user, password = next(iter(cluster.sasl_users.items()))
    (tmp_path / "secure_app.py").write_text(textwrap.dedent(APP))
    env = {**os.environ, "T_GROUP": f"secure-{topic}", "T_BOOTSTRAP": cluster.sasl_ssl_bootstrap, "T_TOPIC": topic,
           "T_OUT": str(tmp_path / "handled.txt"), "T_SECURITY": json.dumps(cluster.client_security(user, password)),
           "PYTHONPATH": str(tmp_path), **(env_extra or {})}
    env.pop("STREAMGUARD_BOOTSTRAP", None)
    return subprocess.Popen([sys.executable, "-m", "streamguard.cli", "run", "secure_app:app", *args], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_right_credentials_consume_over_sasl_ssl(secure_kafka, tmp_path):
    user, password = next(iter(secure_kafka.sasl_users.items()))
    security = secure_kafka.client_security(user, password)
    assert security["security.protocol"] == "SASL_SSL" and security["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert Path(security["ssl.ca.location"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    topic = create_topic(secure_kafka.bootstrap, f"secure-{uuid.uuid4().hex[:8]}", 2)
    produced = produce_all(secure_kafka.sasl_ssl_bootstrap, topic, [(f"k{i}".encode(), b"v") for i in range(20)],
                           extra=security)
    proc = start(secure_kafka, tmp_path, topic)
    out = tmp_path / "handled.txt"
    try:
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 20, 60, what="20 messages handled")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=10)[0]
    assert code == 0, output
    assert password not in output
    assert {tuple(map(int, line.split())) for line in out.read_text().splitlines()} == set(produced)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_wrong_password_stops_with_exit_3_and_never_prints_it(secure_kafka, tmp_path, workers):
    user, password = next(iter(secure_kafka.sasl_users.items()))
    topic = create_topic(secure_kafka.bootstrap, f"secure-{uuid.uuid4().hex[:8]}", 1)
    t0 = time.monotonic()
    proc = start(secure_kafka, tmp_path, topic, "--workers", workers,
                 env_extra={"STREAMGUARD_KAFKA__SASL_PASSWORD": WRONG})
    try:
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    took = time.monotonic() - t0
    assert proc.returncode == 3, output
    assert took < 20, took  # seconds, not the 30 s startup bound and certainly not forever
    assert f"rejected the credentials of user '{user}'" in output
    assert "Authentication failed" in output
    assert "kafka.sasl.password='***' (STREAMGUARD_KAFKA__SASL_PASSWORD)" in output
    assert WRONG not in output
    assert password not in output
    assert not (tmp_path / "handled.txt").exists() or not (tmp_path / "handled.txt").read_text()


def test_worker_itself_reports_rejected_credentials(secure_kafka):
    user, _ = next(iter(secure_kafka.sasl_users.items()))
    topic = create_topic(secure_kafka.bootstrap, f"secure-{uuid.uuid4().hex[:8]}", 1)
    app = App(f"secure-inproc-{topic}", secure_kafka.sasl_ssl_bootstrap,
              kafka=secure_kafka.client_security(user, WRONG), settings=Settings(startup_timeout=15))
    app.handler(topic)(lambda value: None)
    t0 = time.monotonic()
    with pytest.raises(AuthenticationFailed), running(app, ready_timeout=30):
        pass
    assert time.monotonic() - t0 < 10
