"""The chaos battery's machinery: a proxied 3-node cluster, supervised worker processes, the fault log, and
one scenario run from set-up to the checker's verdict.

Who talks to Kafka through what:

- **workers** (``streamguard run streamguard.chaos.battery_app:app`` subprocesses) use the *proxied* bootstrap:
  every byte between a worker and a broker passes a :class:`~streamguard.chaos.proxy.FaultProxy`, so network
  faults hit exactly the runtime under test;
- the **driver**, the **commit sampler** and the **read-back** of DLQ/quarantine use the *direct* listeners:
  the observers are not blinded by the faults they observe (broker kills and pauses hit them too);
- the **brokers** reach each other (replication, KRaft quorum, heartbeats) through one *peer proxy* per ordered
  pair of nodes and listener (``LocalKafkaCluster(peer_proxy_for=...)``: per-JVM hosts file), so
  :meth:`ChaosCluster.isolate` can cut one broker off from its peers while every client still reaches it.

Every scenario gets a fresh topic, consumer group and history folder; the cluster is shared by all scenarios
of a battery (one 3-node cluster at a time on a small machine). Everything started here stops in ``finally``
blocks: workers carry a parent-death signal, the cluster's JVMs have their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamguard.chaos.checker import Report, check
from streamguard.chaos.proxy import FaultProxy
from streamguard.chaos.workload import Driver, JsonlWriter, b64, export_effects, prepare_effects_table
from streamguard.testing.local_kafka import LocalKafkaCluster, node_metadata
from streamguard.testing.sampler import CommitSampler

log = logging.getLogger("streamguard.chaos")

APP_COMMAND = [sys.executable, "-m", "streamguard.cli", "run", "streamguard.chaos.battery_app:app"]
BAD_COMMAND = [sys.executable, "-m", "streamguard.chaos.bad_worker"]
MAX_DELIVERIES = 3  # battery_app's handler setting; the checker needs the same number
SESSION_TIMEOUT_S = 6.0  # battery workers' session.timeout.ms / 1000
#: exit code of a worker process -> the fault it stands for (crash points armed by the scenario)
EXIT_FAULTS = {71: "worker_crash_before_effect", 72: "worker_crash_after_effect_before_mark"}
RUNTIME_CRASH_EXIT = 137
#: exits that are part of a scenario (crash message, SIGKILL, SIGTERM of a rolling restart, clean stop)
EXPECTED_EXITS = (RUNTIME_CRASH_EXIT, 70, -signal.SIGKILL, -signal.SIGTERM, 0)


def _die_with_parent() -> None:
    """SIGKILL this child when the thread that started it dies (no orphaned workers), own process group."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_DEATHSIG
    os.setsid()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------------------------------------------
IsolationMode = Literal["timeout", "down"]
_ISOLATE_TOXIC = "isolate"


class ChaosCluster:
    """A 3-node :class:`LocalKafkaCluster` with a :class:`FaultProxy` in front of each node's PROXIED listener.

    With ``peer_proxies`` (the default) every broker-to-broker connection also passes a :class:`FaultProxy`:
    one per ordered pair of nodes and per listener (``internal``: replication, ``controller``: the KRaft quorum
    and broker heartbeats), 12 for 3 nodes, in :attr:`peer_proxies` keyed ``(src, dst, listener)``. They
    carry no fault unless :meth:`isolate` cuts a node off.
    """

    def __init__(self, workdir: Path | None = None, *, peer_proxies: bool = True) -> None:
        self.proxies: dict[int, FaultProxy] = {}
        self.peer_proxies: dict[tuple[int, int, str], FaultProxy] = {}
        #: node id -> isolation mode, for the nodes cut off from their peers right now
        self.isolated: dict[int, IsolationMode] = {}

        def proxy_for(node_id: int, port: int) -> tuple[str, int]:
            proxy = FaultProxy(("127.0.0.1", port), name=f"broker-{node_id}").start()
            self.proxies[node_id] = proxy
            return ("127.0.0.1", proxy.listen_port)

        def peer_proxy_for(src: int, dst: int, listener: str, listen: tuple[str, int],
                           upstream: tuple[str, int]) -> None:
            proxy = FaultProxy(upstream, listen=listen, name=f"peer-{src}-{dst}-{listener}")
            self.peer_proxies[(src, dst, listener)] = proxy.start()

        try:
            self.cluster = LocalKafkaCluster(3, proxy_for=proxy_for, workdir=workdir,
                                             peer_proxy_for=peer_proxy_for if peer_proxies else None)
        except BaseException:
            self._stop_proxies()
            raise
        self._admin: Any = None

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def proxied_bootstrap(self) -> str:
        return self.cluster.proxied_bootstrap

    def start(self, timeout: float = 180.0) -> ChaosCluster:
        try:
            self.cluster.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.cluster.stop()
        finally:
            self._stop_proxies()

    def _stop_proxies(self) -> None:
        for proxy in [*self.proxies.values(), *self.peer_proxies.values()]:
            proxy.stop()

    def __enter__(self) -> ChaosCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return self._admin

    def heal(self) -> None:
        """Undo every fault: proxies up and clean, isolations lifted, paused nodes resumed, dead nodes started."""
        for proxy in self.proxies.values():
            proxy.clear_toxics()
            if not proxy.enabled:
                proxy.enable()
        if self.isolated:
            log.info("heal: lifting the isolation of %s", ", ".join(f"broker-{n}" for n in sorted(self.isolated)))
        self.isolated.clear()
        for proxy in self.peer_proxies.values():
            if proxy.toxics():
                proxy.clear_toxics()
                proxy.reset_connections()  # a black hole dropped bytes mid-stream: start the streams afresh
            if not proxy.enabled:
                proxy.enable()
        self.cluster.heal()

    # -- isolation: a broker cut off from its peers, clients still reach it ----------------------------------
    def peer_proxies_of(self, node_id: int) -> list[tuple[tuple[int, int, str], FaultProxy]]:
        """The peer proxies of every connection into and out of ``node_id``."""
        return [(key, proxy) for key, proxy in sorted(self.peer_proxies.items()) if node_id in key[:2]]

    def isolate(self, node_id: int, mode: IsolationMode = "timeout") -> None:
        """Cut ``node_id`` off from the other nodes (replication, quorum, heartbeats both ways); clients still
        reach it on every listener.

        ``timeout`` (default): a black hole (the ``timeout`` toxic with timeout 0 on both streams of each peer
        proxy): connections stay open, bytes vanish, new connections are accepted and go nowhere. ``down``: the
        peer proxies are disabled (connections dropped, new ones refused). :meth:`unisolate` or :meth:`heal`
        undo it.
        """
        if not self.peer_proxies:
            raise RuntimeError("this ChaosCluster was built with peer_proxies=False: it cannot isolate a node")
        if mode not in ("timeout", "down"):
            raise ValueError(f"mode must be 'timeout' or 'down', got {mode!r}")
        self.isolated[node_id] = mode
        cut = self._apply_isolation()
        log.info("isolated broker-%d (%s): %d peer proxies cut: %s", node_id,
                 "black hole" if mode == "timeout" else "proxies down", len(cut), ", ".join(cut))

    def unisolate(self, node_id: int) -> None:
        """Lift :meth:`isolate` of ``node_id`` (other isolated nodes stay cut off)."""
        mode = self.isolated.pop(node_id, None)
        self._apply_isolation()
        log.info("broker-%d reconnected to its peers (was: %s)", node_id, mode)

    def _apply_isolation(self) -> list[str]:
        """Bring every peer proxy to the state :attr:`isolated` asks for; returns the names of the cut ones."""
        cut: list[str] = []
        for (src, dst, _), proxy in sorted(self.peer_proxies.items()):
            modes = {mode for node, mode in self.isolated.items() if node in (src, dst)}
            holed = any(t["name"].startswith(_ISOLATE_TOXIC) for t in proxy.toxics())
            if "timeout" in modes and not holed:
                for stream in ("upstream", "downstream"):
                    proxy.add_toxic(f"{_ISOLATE_TOXIC}-{stream}", "timeout", stream=stream, timeout=0)
            elif "timeout" not in modes and holed:
                for stream in ("upstream", "downstream"):
                    with contextlib.suppress(KeyError):
                        proxy.remove_toxic(f"{_ISOLATE_TOXIC}-{stream}")
                proxy.reset_connections()  # the black hole dropped bytes mid-stream: start the streams afresh
            if "down" in modes and proxy.enabled:
                proxy.disable()
            elif "down" not in modes and not proxy.enabled:
                proxy.enable()
            if modes:
                cut.append(proxy.name)
        return cut

    def create_topic(self, name: str, partitions: int, config: dict[str, str] | None = None) -> None:
        from streamguard.testing.pytest_plugin import create_topic

        create_topic(self.bootstrap, name, partitions, 3, {"min.insync.replicas": "2", **(config or {})}, timeout=60)

    def leaders(self, topic: str) -> dict[int, int]:
        md = self.admin.list_topics(topic, timeout=10).topics[topic]
        return {p: pm.leader for p, pm in md.partitions.items()}

    def controller(self) -> int:
        """The active KRaft controller (quorum leader). A Metadata response's ``controller_id`` is no use for
        that: in KRaft it names a random live broker."""
        active = self.cluster.active_controller()
        return active if active is not None else int(self.admin.list_topics(timeout=10).controller_id)

    def coordinator(self, group: str) -> int | None:
        try:
            fut = self.admin.describe_consumer_groups([group], request_timeout=10)[group]
            return int(fut.result(timeout=15).coordinator.id)
        except Exception:
            return None

    def wait_in_sync(self, topics: list[str], timeout: float = 90.0, *, every_node: bool = False) -> bool:
        """Wait until every running node is in the metadata and each partition of ``topics`` has a full ISR.

        ``every_node``: as *each* running node sees it (one Metadata request to each node's direct listener),
        not as whichever broker the admin client asks: a node that was cut off from the controller serves its
        stale view (itself leader, full ISR) until it has caught up.
        """
        deadline = time.monotonic() + timeout
        nodes = [n for n in self.cluster.nodes if n.is_running() and not n._paused]
        running = {n.node_id for n in nodes}
        while time.monotonic() < deadline:
            try:
                if every_node:
                    views = [node_metadata(n.address, topics) for n in nodes]
                    if all(running <= v.brokers and all(
                            len(pv.isr) >= len(running) and pv.leader >= 0
                            for t in topics for pv in v.topics.get(t, {}).values()) for v in views):
                        return True
                else:
                    md = self.admin.list_topics(timeout=5)
                    if running <= set(md.brokers) and all(
                            len(pm.isrs) >= len(running) and pm.leader >= 0
                            for t in topics if t in md.topics for pm in md.topics[t].partitions.values()):
                        return True
            except Exception:
                pass
            time.sleep(0.5)
        return False


# ---------------------------------------------------------------------------------------------------------------
# the fault log
# ---------------------------------------------------------------------------------------------------------------
class FaultLog:
    """``faults.jsonl``: one row per injected fault with its window."""

    def __init__(self, path: Path) -> None:
        self._writer = JsonlWriter(path)
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, kind: str, target: str, t_start: float, t_end: float, **extra: Any) -> None:
        row = {"kind": kind, "target": target, "t_start": t_start, "t_end": max(t_start, t_end), **extra}
        with self._lock:
            self.rows.append(row)
        self._writer.write(row)
        self._writer.flush()
        log.info("fault %s on %s: %.1fs", kind, target, row["t_end"] - t_start)

    @contextlib.contextmanager
    def window(self, kind: str, target: str) -> Iterator[None]:
        t0 = time.time()
        try:
            yield
        finally:
            self.record(kind, target, t0, time.time())

    def close(self) -> None:
        self._writer.close()


# ---------------------------------------------------------------------------------------------------------------
# supervised workers
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    wanted: bool = True
    stopped: bool = False  # SIGSTOPped by a fault
    generation: int = 0
    duplicate_skipped: dict[int, int] = field(default_factory=dict)  # generation -> last scraped count
    sequence_gaps: dict[int, int] = field(default_factory=dict)


class Supervisor:
    """Keep N worker processes alive (restart on exit) the way a process supervisor would; faults act on them.

    Restarts and spawns happen on one long-lived thread (a child's parent-death signal follows the *thread*
    that forked it). Exits with codes from :data:`EXIT_FAULTS` (or 137, an armed runtime crash point) are
    recorded as faults, window = from the exit to the restart.
    """

    def __init__(self, run_dir: Path, command: list[str], env: dict[str, str], faults: FaultLog, *,
                 runtime_crash_kind: str | None = None, restart_delay: float = 0.3) -> None:
        self.run_dir, self.command, self.env, self.faults = run_dir, command, dict(env), faults
        self.runtime_crash_kind = runtime_crash_kind
        self.restart_delay = restart_delay
        self.slots: list[_Slot] = []
        self.exits: list[tuple[float, int, int]] = []  # (t, slot, code)
        self.unexpected_exits: list[tuple[float, int, int]] = []
        self.restarts = 0
        self._lock = threading.Lock()
        self._requests: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._monitor, name="chaos-supervisor", daemon=True)
        self._logs: list[Any] = []
        self._last_scrape = 0.0

    # -- public (any thread) ----------------------------------------------------------------------------------
    def start(self, n: int) -> None:
        self._thread.start()
        for _ in range(n):
            self.add()

    def _on_thread(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        with self._lock:
            self._requests.append(run)
        done.wait(timeout)
        return box[0] if box else None

    def add(self) -> int:
        def spawn_new() -> int:
            slot = _Slot(len(self.slots))
            self.slots.append(slot)
            self._spawn(slot)
            return slot.index

        return int(self._on_thread(spawn_new))

    def live(self) -> list[_Slot]:
        return [s for s in self.slots if s.wanted and s.proc is not None and s.proc.poll() is None and not s.stopped]

    def pick(self, rnd: random.Random) -> _Slot | None:
        live = self.live()
        return rnd.choice(live) if live else None

    def signal(self, slot: _Slot, sig: int) -> None:
        proc = slot.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            if sig == signal.SIGSTOP:
                slot.stopped = True
            elif sig == signal.SIGCONT:
                slot.stopped = False

    def remove(self, slot: _Slot, timeout: float = 40.0) -> None:
        """Stop a worker for good: SIGTERM (drain + commit + leave), SIGKILL after ``timeout``."""
        slot.wanted = False
        proc = slot.proc
        if proc is None:
            return
        if slot.stopped:
            self.signal(slot, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def set_env(self, **values: str) -> None:
        """Environment for processes started from now on (a restart picks it up)."""
        with self._lock:
            self.env.update(values)

    def rolling_restart(self, timeout: float = 40.0) -> None:
        """SIGTERM each live worker in turn and wait for its replacement (picks up a new environment)."""
        for slot in list(self.slots):
            if not slot.wanted or slot.proc is None:
                continue
            gen = slot.generation
            if slot.stopped:
                self.signal(slot, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                slot.proc.terminate()
            deadline = time.monotonic() + timeout
            while slot.generation == gen and time.monotonic() < deadline:
                time.sleep(0.1)
            if slot.generation == gen and slot.proc is not None:
                slot.proc.kill()

    def stop_all(self, timeout: float = 45.0) -> None:
        """SIGTERM every worker (they drain and commit), SIGKILL stragglers, stop the monitor thread."""
        for slot in self.slots:
            slot.wanted = False
            if slot.stopped:
                self.signal(slot, signal.SIGCONT)
        self._scrape(force=True)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.terminate()
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop after SIGTERM; SIGKILL", slot.index)
                slot.proc.kill()
                slot.proc.wait(10)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for fh in self._logs:
            fh.close()

    def kill_everything(self) -> None:
        """Last resort in ``finally``: SIGKILL whatever is still running."""
        self._stop.set()
        for slot in self.slots:
            slot.wanted = False
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.proc.pid, signal.SIGCONT)
                slot.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.proc.wait(10)

    @property
    def duplicate_skipped(self) -> int:
        """Redeliveries the runtime skipped by idempotency (its own metric, scraped from each worker)."""
        return sum(sum(s.duplicate_skipped.values()) for s in self.slots)

    @property
    def sequence_gaps(self) -> int:
        """Gaps the runtime's detector reported (``streamguard_sequence_gaps_total``, scraped)."""
        return sum(sum(s.sequence_gaps.values()) for s in self.slots)

    # -- the monitor thread -----------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        slot.generation += 1
        slot.port = free_port()
        with self._lock:
            env = {**self.env, "STREAMGUARD_HTTP_PORT": str(slot.port)}
        out = (self.run_dir / f"worker-{slot.index}.log").open("ab")
        self._logs.append(out)
        out.write(f"--- generation {slot.generation} at {time.time():.3f}\n".encode())
        out.flush()
        slot.proc = subprocess.Popen(self.command, env=env, cwd=self.run_dir, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        slot.stopped = False

    def _monitor(self) -> None:
        pending: dict[int, tuple[float, int]] = {}  # slot -> (exit time, code)
        while not self._stop.is_set():
            with self._lock:
                requests, self._requests = self._requests, []
            for req in requests:
                req()
            now = time.time()
            for slot in self.slots:
                proc = slot.proc
                if proc is None or slot.index in pending:
                    continue
                code = proc.poll()
                if code is None:
                    continue
                if slot.wanted:
                    self._scrape_slot(slot)
                    self.exits.append((now, slot.index, code))
                    pending[slot.index] = (now, code)
                    if code not in EXIT_FAULTS and code not in EXPECTED_EXITS:
                        self.unexpected_exits.append((now, slot.index, code))
                        log.warning("worker %d exited with %d (see worker-%d.log)", slot.index, code, slot.index)
            for index, (t_exit, code) in list(pending.items()):
                slot = self.slots[index]
                if not slot.wanted:
                    del pending[index]
                    continue
                if time.time() - t_exit >= self.restart_delay:
                    del pending[index]
                    self._spawn(slot)
                    self.restarts += 1
                    kind = EXIT_FAULTS.get(code)
                    if code == RUNTIME_CRASH_EXIT and self.runtime_crash_kind:
                        kind = self.runtime_crash_kind
                    if kind:
                        self.faults.record(kind, f"worker-{index}", t_exit, time.time())
            self._scrape()
            self._stop.wait(0.05)

    def _scrape(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_scrape < 2.0:
            return
        self._last_scrape = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None and not slot.stopped:
                self._scrape_slot(slot)

    _DUP = re.compile(r'^streamguard_messages_total\{[^}]*outcome="duplicate_skipped"[^}]*\}\s+([0-9.e+]+)', re.M)
    _GAPS = re.compile(r'^streamguard_sequence_gaps_total\{[^}]*\}\s+([0-9.e+]+)', re.M)

    def _scrape_slot(self, slot: _Slot) -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{slot.port}/metrics", timeout=0.5) as resp:
                text = resp.read().decode()
        except Exception:
            return
        total = sum(int(float(m)) for m in self._DUP.findall(text))
        slot.duplicate_skipped[slot.generation] = max(total, slot.duplicate_skipped.get(slot.generation, 0))
        gaps = sum(int(float(m)) for m in self._GAPS.findall(text))
        slot.sequence_gaps[slot.generation] = max(gaps, slot.sequence_gaps.get(slot.generation, 0))


# ---------------------------------------------------------------------------------------------------------------
# commits, as an outsider sees them
# ---------------------------------------------------------------------------------------------------------------
def _raw(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the beginning to the current end, as checker rows."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "log_level": 0})
    rows: list[dict[str, Any]] = []
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return rows
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
        todo = {p for p, end in ends.items() if end > 0}
        if not todo:
            return rows
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is not None:
                    continue
                raw_headers: Any = m.headers() or []
                headers: list[tuple[str, Any]] = list(raw_headers)
                hdr = dict(headers)
                partition, offset = int(m.partition() or 0), int(m.offset() or 0)
                rows.append({
                    "partition": partition, "offset": offset, "t": m.timestamp()[1] / 1000.0,
                    "source_partition": int(hdr.get("streamguard.source.partition") or -1),
                    "source_offset": int(hdr.get("streamguard.source.offset") or -1),
                    "key_b64": b64(_raw(m.key())), "value_b64": b64(_raw(m.value())),
                    "headers": [[k, b64(_raw(v))] for k, v in headers],
                })
                if offset + 1 >= ends[partition]:
                    todo.discard(partition)
    finally:
        consumer.close()
    return rows


def log_end(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-log-end", "log_level": 0})
    try:
        return {p: int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                for p in range(partitions)}
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------------------------------------
# one scenario run
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """What a scenario run needs besides its fault schedule."""

    name: str
    messages: int = 2000
    rate: float = 120.0
    partitions: int = 6
    workers: int = 3
    mode: str = "atomic"  # battery_app SG_CHAOS_MODE
    worker: str = "app"  # or "bad": the commit-before-process control
    mix: dict[str, float] = field(default_factory=lambda: {"ok": 1.0})
    handler_crash: str = ""  # SG_CHAOS_HANDLER_CRASH
    runtime_crash: str = ""  # STREAMGUARD_CRASH_AT
    runtime_crash_kind: str | None = None
    precreate_dlq: bool = True
    liveness_bound_s: float = 60.0
    drain_timeout_s: float = 150.0
    seed: int = 1


@dataclass
class RunResult:
    name: str
    dir: Path
    report: Report
    duplicate_skipped: int
    sequence_gaps: int
    unacked_sends: int
    restarts: int
    unexpected_exits: list[tuple[float, int, int]]
    started: float
    finished: float
    drained: bool
    sampler_errors: int
    driver_error: str | None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "dir": str(self.dir), "ok": self.report.ok, "report": self.report.to_dict(),
                "duplicate_skipped_by_runtime": self.duplicate_skipped, "worker_restarts": self.restarts,
                "sequence_gaps_by_runtime": self.sequence_gaps, "unacked_sends": self.unacked_sends,
                "unexpected_worker_exits": [list(e) for e in self.unexpected_exits],
                "started": self.started, "finished": self.finished, "seconds": round(self.finished - self.started, 1),
                "drained": self.drained, "sampler_errors": self.sampler_errors, "driver_error": self.driver_error}


class ChaosRun:
    """One scenario: topic, workers, driver, sampler and fault log; the body injects faults through it."""

    def __init__(self, cc: ChaosCluster, spec: RunSpec, out_dir: Path) -> None:
        self.cc, self.spec = cc, spec
        self.dir = out_dir / spec.name
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.jsonl"):
            stale.unlink()
        suffix = uuid.uuid4().hex[:6]
        self.topic = f"chaos-{spec.name}-{suffix}"
        self.group = f"chaos-g-{spec.name}-{suffix}"
        self.rnd = random.Random(spec.seed)
        self.faults = FaultLog(self.dir / "faults.jsonl")
        self.db = self.dir / "chaos.db"
        self.pg_dsn: str | None = None
        self._pg_base = os.environ.get("STREAMGUARD_PG_DSN") or None
        self.sup: Supervisor | None = None
        self.sampler: CommitSampler | None = None
        self.driver: Driver | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    def _setup_store(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        if self._pg_base and self.spec.worker == "app":
            import psycopg

            name = f"sgchaos_{self.spec.name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
            with psycopg.connect(self._pg_base, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            self.pg_dsn = self._pg_base.rsplit("/", 1)[0] + f"/{name}"
        prepare_effects_table(self.db, self.pg_dsn)

    def start(self) -> None:
        spec = self.spec
        self._setup_store()
        log_append = {"message.timestamp.type": "LogAppendTime"}
        self.cc.create_topic(self.topic, spec.partitions)
        self.cc.create_topic(f"{self.topic}.quarantine", spec.partitions, log_append)
        if spec.precreate_dlq:
            self.cc.create_topic(f"{self.topic}.dlq", spec.partitions, log_append)
        env = {k: v for k, v in os.environ.items() if k not in ("STREAMGUARD_CRASH_AT", "STREAMGUARD_PG_DSN")}
        env.update({"STREAMGUARD_BOOTSTRAP": self.cc.proxied_bootstrap, "SG_CHAOS_DIR": str(self.dir),
                    "SG_CHAOS_TOPIC": self.topic, "SG_CHAOS_GROUP": self.group, "SG_CHAOS_MODE": spec.mode,
                    "SG_CHAOS_DB": str(self.db), "SG_CHAOS_SESSION_MS": str(int(SESSION_TIMEOUT_S * 1000)),
                    "SG_CHAOS_HANDLER_CRASH": spec.handler_crash, "STREAMGUARD_LOG_LEVEL": "INFO",
                    "PYTHONUNBUFFERED": "1"})
        if spec.runtime_crash:
            env["STREAMGUARD_CRASH_AT"] = spec.runtime_crash
        if self.pg_dsn:
            env["STREAMGUARD_PG_DSN"] = self.pg_dsn
        command = APP_COMMAND if spec.worker == "app" else BAD_COMMAND
        self.sampler = CommitSampler(self.cc.bootstrap, self.group, self.topic, spec.partitions, interval=0.2)
        self.sampler.__enter__()
        self.sup = Supervisor(self.dir, command, env, self.faults, runtime_crash_kind=spec.runtime_crash_kind)
        self.sup.start(spec.workers)
        self.driver = Driver(self.cc.bootstrap, self.topic, spec.partitions, self.dir, count=spec.messages,
                             rate=spec.rate, id_prefix=f"{spec.name}-", mix=spec.mix, seed=spec.seed)
        self.driver.hold()
        self.driver.start()

    def warm_up(self, timeout: float = 45.0) -> None:
        """Wait until the workers have committed something (they are assigned and working)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sampler is not None and any(o > 0 for o in self.sampler.latest.values()):
                return
            time.sleep(0.2)
        log.warning("%s: no commit within %.0fs of the start", self.spec.name, timeout)

    def remaining_driver_time(self) -> float:
        d = self.driver
        if d is None:
            return 0.0
        return max(0.0, (d.count - d.sent) / d.rate)

    def finish(self) -> RunResult:
        """Let the driver finish, heal, wait for the drain (bounded), stop everything and run the checker."""
        spec = self.spec
        assert self.driver is not None and self.sup is not None and self.sampler is not None
        started = self.started
        self.driver.hold(False)
        self.driver.join(self.remaining_driver_time() + 240)
        self.driver.stop()
        self.driver.join(60)
        self.cc.heal()
        for slot in self.sup.slots:
            if slot.stopped:
                self.sup.signal(slot, signal.SIGCONT)
        drained = self.wait_drained(spec.drain_timeout_s)
        self.sup.stop_all()
        time.sleep(1.0)  # a few more samples after the final commits on shutdown
        self.sampler.__exit__(None, None, None)
        return self._collect(started, drained)

    def abort(self) -> None:
        """Cleanup after an error: nothing may outlive the run."""
        if self.driver is not None:
            self.driver.stop()
        if self.sup is not None:
            self.sup.kill_everything()
        if self.sampler is not None and self.sampler._thread.is_alive():
            self.sampler.__exit__(None, None, None)
        self.faults.close()
        if self.pg_dsn and self._pg_base:  # the ledger was exported to effects.jsonl; drop the database
            import psycopg

            with contextlib.suppress(Exception), psycopg.connect(self._pg_base, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.pg_dsn.rsplit('/', 1)[1]} WITH (FORCE)")
            self.pg_dsn = None

    def wait_drained(self, timeout: float) -> bool:
        assert self.sampler is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ends = log_end(self.cc.bootstrap, self.topic, self.spec.partitions)
            except Exception:
                time.sleep(1)
                continue
            if all(self.sampler.latest.get(p, 0) >= end for p, end in ends.items()):
                return True
            time.sleep(1.0)
        log.warning("%s: not drained after %.0fs: committed %s", self.spec.name, timeout, self.sampler.latest)
        return False

    def _collect(self, started: float, drained: bool) -> RunResult:
        assert self.sampler is not None and self.sup is not None and self.driver is not None
        self.faults.close()
        commits = JsonlWriter(self.dir / "commits.jsonl")
        for t, p, o in self.sampler.samples:
            commits.write({"t": t, "partition": p, "offset": o})
        commits.close()
        ends = log_end(self.cc.bootstrap, self.topic, self.spec.partitions)
        writer = JsonlWriter(self.dir / "log_end.jsonl")
        for p, end in ends.items():
            writer.write({"partition": p, "offset": end})
        writer.close()
        for name in ("dlq", "quarantine"):
            writer = JsonlWriter(self.dir / f"{name}.jsonl")
            for row in read_topic(self.cc.bootstrap, f"{self.topic}.{name}"):
                writer.write(row)
            writer.close()
        export_effects(self.db, self.dir / "effects.jsonl", self.pg_dsn)
        report = check(self.dir, max_deliveries=MAX_DELIVERIES, liveness_bound_s=self.spec.liveness_bound_s)
        err = self.driver.error
        return RunResult(self.spec.name, self.dir, report, self.sup.duplicate_skipped, self.sup.sequence_gaps,
                         self.driver.failed, self.sup.restarts,
                         list(self.sup.unexpected_exits), started, time.time(), drained, self.sampler.errors,
                         None if err is None else repr(err))

    # -- faults -----------------------------------------------------------------------------------------------
    started: float = 0.0

    def node_down(self, node_id: int, seconds: float, kind: str) -> None:
        """SIGKILL a broker, keep it down ``seconds``, start it and wait for full ISRs (inside the window)."""
        node = self.cc.cluster.node(node_id)
        with self.faults.window(kind, f"broker-{node_id}"):
            node.kill()
            time.sleep(seconds)
            node.start()
            self.cc.wait_in_sync([self.topic, "__consumer_offsets"], 120)

    def node_pause(self, node_id: int, seconds: float, kind: str) -> None:
        node = self.cc.cluster.node(node_id)
        with self.faults.window(kind, f"broker-{node_id}"):
            node.pause()
            try:
                time.sleep(seconds)
            finally:
                node.resume()
        self.cc.wait_in_sync([self.topic, "__consumer_offsets"], 120)

    def isolate(self, node_id: int, seconds: float, kind: str, mode: IsolationMode = "timeout") -> None:
        """Cut a broker off from its peers for ``seconds`` (clients still reach it), then reconnect it and wait
        for full ISRs (outside the window: recovery is measured from the reconnection)."""
        with self.faults.window(kind, f"broker-{node_id}"):
            self.cc.isolate(node_id, mode)
            try:
                time.sleep(seconds)
            finally:
                self.cc.unisolate(node_id)
        if not self.cc.wait_in_sync([self.topic, "__consumer_offsets"], 120, every_node=True):
            log.warning("%s: ISRs not full within 120 s of reconnecting broker-%d", self.spec.name, node_id)

    def proxies(self, nodes: list[int] | None) -> list[tuple[int, FaultProxy]]:
        ids = nodes or sorted(self.cc.proxies)
        return [(i, self.cc.proxies[i]) for i in ids]

    def toxic(self, kind: str, nodes: list[int] | None, seconds: float, toxic: str,
              streams: tuple[str, ...] = ("upstream", "downstream"), **attrs: float) -> None:
        """Add a toxic to the proxies of ``nodes`` (None: all) for ``seconds``."""
        targets = self.proxies(nodes)
        name = f"{kind}-{uuid.uuid4().hex[:4]}"
        label = "proxy-all" if nodes is None else ",".join(f"proxy-{i}" for i, _ in targets)
        with self.faults.window(kind, label):
            try:
                for _, proxy in targets:
                    for stream in streams:
                        proxy.add_toxic(f"{name}-{stream}", toxic, stream=stream, **attrs)
                time.sleep(seconds)
            finally:
                for _, proxy in targets:
                    for stream in streams:
                        with contextlib.suppress(Exception):
                            proxy.remove_toxic(f"{name}-{stream}")

    def proxy_down(self, kind: str, nodes: list[int] | None, seconds: float) -> None:
        targets = self.proxies(nodes)
        label = "proxy-all" if nodes is None else ",".join(f"proxy-{i}" for i, _ in targets)
        with self.faults.window(kind, label):
            try:
                for _, proxy in targets:
                    proxy.disable()
                time.sleep(seconds)
            finally:
                for _, proxy in targets:
                    proxy.enable()

    def worker_kill(self) -> None:
        """SIGKILL a random live worker; the window ends when the supervisor has restarted it."""
        assert self.sup is not None
        slot = self.sup.pick(self.rnd)
        if slot is None:
            return
        gen = slot.generation
        t0 = time.time()
        self.sup.signal(slot, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while slot.generation == gen and time.monotonic() < deadline:
            time.sleep(0.05)
        self.faults.record("worker_sigkill", f"worker-{slot.index}", t0, time.time())

    def worker_zombie(self, seconds: float) -> None:
        """SIGSTOP a worker past the session timeout, then SIGCONT: it must find its partitions fenced."""
        assert self.sup is not None
        slot = self.sup.pick(self.rnd)
        if slot is None:
            return
        with self.faults.window("worker_zombie", f"worker-{slot.index}"):
            self.sup.signal(slot, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                self.sup.signal(slot, signal.SIGCONT)

    def rebalance_storm(self, seconds: float, period: float) -> None:
        """Add and remove workers every ``period`` seconds (removal: SIGTERM, drain, leave)."""
        assert self.sup is not None
        extra: list[_Slot] = []
        with self.faults.window("rebalance_storm", "workers"):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if len(extra) < 2 and (not extra or self.rnd.random() < 0.6):
                    extra.append(self.sup.slots[self.sup.add()])
                else:
                    victim = extra.pop(self.rnd.randrange(len(extra)))
                    threading.Thread(target=self.sup.remove, args=(victim,), daemon=True).start()
                time.sleep(period)
            for victim in extra:
                self.sup.remove(victim)

    def inject(self, kind: str, n: int, fault_kind: str | None = None) -> None:
        """Send ``n`` messages of ``kind`` next; recorded as a (message) fault once they are acked."""
        assert self.driver is not None
        t0 = time.time()
        before = self.driver.sent
        self.driver.inject(kind, n)
        self.driver.wait_sent(before + n, 30)
        time.sleep(0.5)
        self.faults.record(fault_kind or f"msg_{kind}", "topic", t0, time.time(), messages=n)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def settle(self, bound: float = 90.0) -> float:
        """Wait until the group's commits reach the log end as it is now (bounded); returns the seconds waited.

        Called between faults so that each fault's recovery is measured on its own instead of running into
        the next fault.
        """
        assert self.sampler is not None
        t0 = time.monotonic()
        target: dict[int, int] | None = None
        while target is None and time.monotonic() - t0 < bound:
            try:  # right after a broker restart the offsets may not be readable yet
                target = log_end(self.cc.bootstrap, self.topic, self.spec.partitions)
            except Exception:
                time.sleep(1.0)
        if target is None:
            return time.monotonic() - t0
        while time.monotonic() - t0 < bound:
            if all(self.sampler.latest.get(p, 0) >= end for p, end in target.items()):
                break
            time.sleep(0.3)
        else:
            log.warning("%s: commits did not catch up within %.0fs of a fault", self.spec.name, bound)
        return time.monotonic() - t0


def run_scenario(cc: ChaosCluster, spec: RunSpec, body: Callable[[ChaosRun], None], out_dir: Path) -> RunResult:
    """Run one scenario end to end; nothing it started outlives it."""
    run = ChaosRun(cc, spec, out_dir)
    run.started = time.time()
    try:
        run.start()
        run.warm_up()
        body(run)
        return run.finish()
    finally:
        run.abort()
        with contextlib.suppress(Exception):
            cc.heal()
