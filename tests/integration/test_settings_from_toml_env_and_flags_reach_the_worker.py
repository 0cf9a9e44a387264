"""Settings: `streamguard run` applies code < streamguard.toml < STREAMGUARD_* < CLI flags in a real worker,
STREAMGUARD_BOOTSTRAP overrides the App's brokers, secrets never reach the output, and a bad setting stops
`run` (also with --workers) with exit 2 naming the setting and its source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import urllib.request

from streamguard.testing.local_kafka import free_port
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import wait_until

APP = """
import os
from streamguard import App, Settings
# brokers in code point nowhere: the worker only works if STREAMGUARD_BOOTSTRAP wins
app = App(os.environ["T_GROUP"], "127.0.0.1:1", settings=Settings(commit_interval=5.0, http_port=1))
out = open(os.environ["T_OUT"], "a", buffering=1)

@app.handler(os.environ["T_TOPIC"])
def handle(value, ctx):
    out.write(f"{ctx.partition} {ctx.offset}\\n")
"""

SECRET = "pa55-never-print-me"


def test_toml_env_and_flags_reach_a_real_worker(kafka, new_topic, tmp_path):
    topic = new_topic(partitions=1)
    produce_all(kafka.bootstrap, topic, [(b"k", b"v")] * 5)
    (tmp_path / "settings_app.py").write_text(textwrap.dedent(APP))
    toml_port, env_port, cli_port = free_port(), free_port(), free_port()
    (tmp_path / "streamguard.toml").write_text(textwrap.dedent(f"""
        [streamguard]
        commit_interval = 0.3
        http_port = {toml_port}
        shutdown_timeout = 20

        [streamguard.kafka]
        "client.rack" = "rack-from-toml"
        sasl.password = "{SECRET}"
    """))
    out = tmp_path / "handled.txt"
    env = {**os.environ, "T_GROUP": f"settings-{topic}", "T_TOPIC": topic, "T_OUT": str(out),
           "PYTHONPATH": str(tmp_path), "STREAMGUARD_BOOTSTRAP": kafka.bootstrap,
           "STREAMGUARD_HTTP_PORT": str(env_port), "STREAMGUARD_SHUTDOWN_TIMEOUT": "15",
           "STREAMGUARD_KAFKA__SSL_KEY_PASSWORD": SECRET}
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:  # ./streamguard.toml is found without --config
        proc = subprocess.Popen([sys.executable, "-m", "streamguard.cli", "run", "settings_app:app",
                                 "--http-port", str(cli_port)], env=env, cwd=tmp_path, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 5, 60, what="5 messages handled")
        with urllib.request.urlopen(f"http://127.0.0.1:{cli_port}/metrics", timeout=5) as resp:
            assert b"streamguard_messages_total" in resp.read()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = log_path.read_text()
    assert code == 0, output
    assert f"brokers {kafka.bootstrap} (from STREAMGUARD_BOOTSTRAP)" in output
    assert "commit_interval=0.3 (streamguard.toml)" in output
    assert "shutdown_timeout=15.0 (STREAMGUARD_SHUTDOWN_TIMEOUT)" in output
    assert f"http_port={cli_port} (--http-port)" in output
    assert "kafka.client.rack='rack-from-toml' (streamguard.toml)" in output
    assert "kafka.sasl.password='***' (streamguard.toml)" in output
    assert "kafka.ssl.key.password='***' (STREAMGUARD_KAFKA__SSL_KEY_PASSWORD)" in output
    assert SECRET not in output


def run_cli(tmp_path, *args, env_extra=None):
    (tmp_path / "settings_app.py").write_text(textwrap.dedent(APP))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "T_GROUP": "g", "T_TOPIC": "t", "T_OUT": str(tmp_path / "o"),
           **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "streamguard.cli", "run", "settings_app:app", *args], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_bad_settings_stop_run_with_exit_2_naming_setting_and_source(tmp_path):
    for workers in ("1", "3"):
        code, output = run_cli(tmp_path, "--workers", workers, env_extra={"STREAMGUARD_COMMIT_INTERVAL": "fast"})
        assert code == 2, output
        assert "streamguard: STREAMGUARD_COMMIT_INTERVAL: expected a number, got 'fast'" in output
        assert "started (pid" not in output

    (tmp_path / "streamguard.toml").write_text("[streamguard]\ncomit_interval = 0.5\n")
    code, output = run_cli(tmp_path, "--workers", "2")
    assert code == 2, output
    assert "streamguard.toml: unknown setting 'comit_interval' (did you mean 'commit_interval'?)" in output
    assert "started (pid" not in output

    (tmp_path / "other.toml").write_text(f"[streamguard.kafka]\n'sasl.password' = ['{SECRET}']\n")
    code, output = run_cli(tmp_path, "--config", "other.toml")
    assert code == 2, output
    assert "other.toml: [streamguard.kafka] sasl.password" in output
    assert SECRET not in output

    code, output = run_cli(tmp_path, "--config", "missing.toml")
    assert code == 2, output
    assert "--config missing.toml: file not found" in output
