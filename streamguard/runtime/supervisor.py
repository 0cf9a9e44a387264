"""The ``streamguard run --workers N`` supervisor: N worker processes in one consumer group, kept alive.

What it does, and nothing more (the workers do all the Kafka work):

- starts N workers (``python -m streamguard.cli run MODULE:APP ...``, ``STREAMGUARD_WORKER_INDEX=i``), each
  in its own process group (a terminal's Ctrl-C reaches only the supervisor, which forwards it once) and
  with a parent-death signal (SIGTERM) so a SIGKILLed supervisor leaves no orphan consuming;
- restarts a worker that exits on its own (a crash, a kill, a non-zero exit, or even exit 0) with
  exponential backoff per worker: 0.5 s doubling up to 30 s, back to 0.5 s once a worker ran 60 s;
- stops everything and exits with the worker's code when a worker exits 2 (configuration error: bad import
  path, unknown topic, broker unreachable within ``startup_timeout``, invalid setting) or 3 (credentials
  rejected): restarting cannot fix those;
- forwards the first SIGTERM/SIGINT to every worker (graceful drain) and SIGKILL on the second; exits 0 if
  every worker then stopped cleanly, 1 otherwise. If workers outlive ``shutdown_timeout`` + a grace period
  after the forwarded signal, they are SIGKILLed (so the supervisor always ends by itself).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("streamguard.supervisor")

EXIT_CONFIG = 2
"""A worker (or the supervisor) exits 2 on a configuration error; the supervisor does not restart it."""
EXIT_AUTH = 3
"""A worker exits 3 when the cluster rejects its credentials; the supervisor does not restart it."""
FATAL_CODES = {EXIT_CONFIG: "configuration error", EXIT_AUTH: "credentials rejected"}


@dataclass
class WorkerSlot:
    """One of the N worker positions: its current process (if any) and its restart state."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def _child_setup(parent: int) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


class Supervisor:
    """Run ``workers`` copies of ``command(index)`` and keep them running; see the module docstring."""

    def __init__(self, command: Callable[[int], Sequence[str]], workers: int, *,
                 env: Mapping[str, str] | None = None, shutdown_timeout: float = 30.0, stop_grace: float = 10.0,
                 initial_backoff: float = 0.5, max_backoff: float = 30.0, healthy_after: float = 60.0,
                 tick: float = 0.1, metrics: Any = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.command = command
        self.env = dict(os.environ if env is None else env)
        self.shutdown_timeout = shutdown_timeout
        self.stop_grace = stop_grace
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self.tick = tick
        if metrics is None:
            from streamguard.observability.metrics import Metrics

            metrics = Metrics()
        self.metrics = metrics
        self.slots = [WorkerSlot(i, backoff=initial_backoff) for i in range(workers)]
        self.restarts = 0
        self._signals: list[int] = []
        self._handled_signals = 0
        self._stopping = False
        self._killed = False
        self._stop_deadline: float | None = None
        self._fatal: int | None = None

    # ------------------------------------------------------------------ processes
    def _spawn(self, slot: WorkerSlot) -> None:
        env = {**self.env, "STREAMGUARD_WORKER_INDEX": str(slot.index)}
        cmd = list(self.command(slot.index))
        slot.process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, process_group=0,
                                        preexec_fn=_child_setup(os.getpid()))
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def _send(self, signum: int) -> None:
        for slot in self.slots:
            if slot.running() and slot.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signum)

    def _begin_stop(self, signum: int, why: str) -> None:
        self._stopping = True
        self._stop_deadline = time.monotonic() + self.shutdown_timeout + self.stop_grace
        for slot in self.slots:
            slot.restart_at = None
        running = [s for s in self.slots if s.running()]
        if running:
            log.info("%s: sending %s to %d worker(s) (pids %s)", why, signal.Signals(signum).name, len(running),
                     ", ".join(str(s.pid) for s in running))
        self._send(signum)

    def _kill_all(self, why: str) -> None:
        self._killed = True
        running = [s for s in self.slots if s.running()]
        if running:
            log.warning("%s: sending SIGKILL to %d worker(s) (pids %s)", why, len(running),
                        ", ".join(str(s.pid) for s in running))
        self._send(signal.SIGKILL)

    # ------------------------------------------------------------------ events
    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._handled_signals < len(self._signals):
            signum = self._signals[self._handled_signals]
            self._handled_signals += 1
            if not self._stopping:
                self._begin_stop(signum, f"{signal.Signals(signum).name} received; draining")
            else:
                self._kill_all(f"second signal ({signal.Signals(signum).name})")

    def _on_exit(self, slot: WorkerSlot, code: int, now: float) -> None:
        slot.exit_codes.append(code)
        pid = slot.pid
        if self._stopping:
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "worker %d (pid %s) exited with %d", slot.index, pid, code)
            return
        if code in FATAL_CODES:
            log.error("worker %d (pid %s) exited with %d (%s); stopping all workers", slot.index, pid, code,
                      FATAL_CODES[code])
            self._fatal = code
            self._begin_stop(signal.SIGTERM, f"worker {slot.index} failed")
            return
        if now - slot.started_at >= self.healthy_after:
            slot.backoff = self.initial_backoff
        delay = slot.backoff
        slot.backoff = min(slot.backoff * 2, self.max_backoff)
        slot.restart_at = now + delay
        log.warning("worker %d (pid %s) exited with %d; restarting in %.1fs", slot.index, pid, code, delay)

    def _restart_due(self, now: float) -> None:
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at and not slot.running():
                slot.restarts += 1
                self.restarts += 1
                self.metrics.worker_restarts.inc()
                self._spawn(slot)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Start the workers and supervise them until they are all stopped; return the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self.slots:
                self._spawn(slot)
            return self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._reap_all()

    def _loop(self) -> int:
        while True:
            self._handle_signals()
            now = time.monotonic()
            for slot in self.slots:
                if slot.process is not None and slot.process.returncode is None:
                    code = slot.process.poll()
                    if code is not None:
                        self._on_exit(slot, code, now)
            if self._stopping:
                if not any(s.running() for s in self.slots):
                    break
                if not self._killed and self._stop_deadline is not None and now > self._stop_deadline:
                    self._kill_all(f"workers still running {self.shutdown_timeout + self.stop_grace:.0f}s after "
                                   "the stop signal")
            else:
                self._restart_due(now)
            time.sleep(self.tick)
        if self._fatal is not None:
            log.error("supervisor exiting with %d (%s)", self._fatal, FATAL_CODES[self._fatal])
            return self._fatal
        last = [s.exit_codes[-1] if s.exit_codes else 0 for s in self.slots]
        clean = all(code == 0 for code in last)
        log.info("all %d worker(s) stopped (%s); %d restart(s)", len(self.slots),
                 "cleanly" if clean else "exit codes " + ", ".join(map(str, last)), self.restarts)
        return 0 if clean else 1

    def _reap_all(self) -> None:
        """Never leave a worker behind (e.g. on an unexpected error in the loop)."""
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.process.wait(10)
