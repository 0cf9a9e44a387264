"""Foundation: the launcher never leaves a broker JVM running: not on exit, not when its owner is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from streamguard.testing import LocalKafkaCluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie counts as gone
        return f.read().split(")")[-1].split()[0] != "Z"


def test_context_manager_stops_the_jvm():
    with LocalKafkaCluster(1) as cluster:
        pid = cluster.nodes[0].pid
        assert pid and _alive(pid)
    assert not _alive(pid)


def test_sigkilled_owner_takes_its_jvm_down():
    code = ("import time,sys\nfrom streamguard.testing import LocalKafkaCluster\n"
            "c=LocalKafkaCluster(1).start()\nprint(c.nodes[0].pid, flush=True)\ntime.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())
        assert _alive(pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the broker JVM outlived its SIGKILLed owner"
    finally:
        owner.kill()
