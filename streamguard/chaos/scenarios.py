"""The battery's scenarios and negative controls: a fault schedule each, run by :mod:`streamguard.chaos.harness`.

Durations scale with a *profile*: ``smoke`` (CI, a few minutes for a handful of scenarios) and ``full`` (the
battery of the reliability issue). Every scenario keeps its message rate moderate (2 shared cores).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamguard.chaos.harness import SESSION_TIMEOUT_S, ChaosRun, RunResult, RunSpec

Body = Callable[[ChaosRun], None]


@dataclass
class Scenario:
    name: str
    doc: str
    body: Body
    weight: float = 1.0  # share of the battery's messages
    spec: dict[str, Any] = field(default_factory=dict)  # RunSpec overrides
    control: str | None = None  # negative control: the invariant family that must be caught
    smoke: bool = False


@dataclass
class Profile:
    """Fault durations (seconds) for one profile."""

    name: str
    kill_down: float = 4.0
    repeats: int = 3
    calm: float = 4.0
    pause_short: float = 3.0
    pause_long: float = SESSION_TIMEOUT_S + 6.0
    partition_short: float = 12.0  # one broker
    partition_all: float = 12.0
    partition_long: float = 30.0
    partition_very_long: float = 0.0  # one broker; 0: not run
    partition_all_very_long: float = 0.0  # every broker; 0: not run
    isolate: float = 10.0  # a leader cut off from its peers (clients still reach it)
    isolate_long: float = 0.0  # 0: not run
    isolate_controller: float = 0.0  # the active controller cut off from its peers; 0: not run
    degraded: float = 8.0
    zombie: float = SESSION_TIMEOUT_S + 6.0
    storm: float = 24.0
    soak: float = 60.0
    crash_window: float = 25.0


SMOKE = Profile("smoke", kill_down=3.0, repeats=1, calm=3.0, crash_window=10.0)
FULL = Profile("full", repeats=3, partition_short=30.0, partition_all=15.0, partition_very_long=120.0,
               partition_all_very_long=120.0, isolate=30.0, isolate_long=120.0, isolate_controller=30.0, soak=150.0,
               crash_window=30.0)


def _calm(run: ChaosRun, p: Profile) -> None:
    """Let the group catch up with the log (bounded), then a calm period."""
    run.settle()
    time.sleep(p.calm)


# -- cluster faults ---------------------------------------------------------------------------------------------
def leader_kill(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        for i in range(p.repeats):
            leaders = run.cc.leaders(run.topic)
            victim = leaders[run.rnd.choice(sorted(leaders))]
            run.node_down(victim, p.kill_down, "broker_kill_leader")
            _calm(run, p)
            if p.name == "full" and i == 0:
                coordinator = run.cc.coordinator(run.group)
                if coordinator is not None:
                    run.node_down(coordinator, p.kill_down, "broker_kill_coordinator")
                    _calm(run, p)
                run.node_down(run.cc.controller(), p.kill_down, "broker_kill_controller")
                _calm(run, p)
    return body


def broker_pause(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        for _ in range(max(1, p.repeats - 1)):
            leaders = run.cc.leaders(run.topic)
            run.node_pause(leaders[run.rnd.choice(sorted(leaders))], p.pause_short, "broker_pause_short")
            _calm(run, p)
        leaders = run.cc.leaders(run.topic)
        run.node_pause(leaders[run.rnd.choice(sorted(leaders))], p.pause_long, "broker_pause_long")
        _calm(run, p)
    return body


def net_partition(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        one = [run.rnd.choice(sorted(run.cc.proxies))]
        run.toxic("net_blackhole_one", one, p.partition_short, "timeout", timeout=0)
        _calm(run, p)
        run.proxy_down("net_down_one", one, p.partition_short)
        _calm(run, p)
        run.toxic("net_blackhole_all", None, p.partition_all, "timeout", timeout=0)
        _calm(run, p)
        run.proxy_down("net_down_all", None, p.partition_long)
        _calm(run, p)
        if p.partition_very_long:
            run.toxic("net_blackhole_one_long", [run.rnd.choice(sorted(run.cc.proxies))], p.partition_very_long,
                      "timeout", timeout=0)
            _calm(run, p)
        if p.partition_all_very_long:
            run.toxic("net_blackhole_all_long", None, p.partition_all_very_long, "timeout", timeout=0)
            _calm(run, p)
    return body


def isolated_leader(p: Profile) -> Body:
    """Cut a partition leader off from its peers (replication, quorum, heartbeats) while clients still reach it:
    the controller fences it and moves leadership, but the isolated broker keeps answering with its stale view."""
    def body(run: ChaosRun) -> None:
        leaders = run.cc.leaders(run.topic)
        run.isolate(leaders[run.rnd.choice(sorted(leaders))], p.isolate, "broker_isolate_leader")
        _calm(run, p)
        if p.isolate_long:
            leaders = run.cc.leaders(run.topic)
            run.isolate(leaders[run.rnd.choice(sorted(leaders))], p.isolate_long, "broker_isolate_leader_long")
            _calm(run, p)
        if p.isolate_controller:  # peer proxies down this time (connections refused) rather than a black hole
            run.isolate(run.cc.controller(), p.isolate_controller, "broker_isolate_controller", mode="down")
            _calm(run, p)
    return body


def degraded_network(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        run.toxic("net_latency", None, p.degraded, "latency", latency=150, jitter=100)
        _calm(run, p)
        run.toxic("net_bandwidth", None, p.degraded, "bandwidth", streams=("downstream",), rate=64)
        _calm(run, p)
        run.toxic("net_slicer", None, p.degraded, "slicer", average_size=64, size_variation=32, delay=200)
        _calm(run, p)
        run.toxic("net_reset_peer", None, p.degraded, "reset_peer", timeout=1500)
        _calm(run, p)
        run.toxic("net_loss", None, p.degraded, "loss", percent=10)
        _calm(run, p)
    return body


# -- worker faults ----------------------------------------------------------------------------------------------
def worker_kill(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        for _ in range(p.repeats + 2):
            run.worker_kill()
            run.settle(60)
            time.sleep(run.rnd.uniform(1.0, 3.0))
    return body


def armed_window(p: Profile) -> Body:
    return armed_for(p.crash_window)


def armed_for(seconds: float) -> Body:
    """Crash points are armed by the spec's environment; after the window, disarm and roll the workers."""
    def body(run: ChaosRun) -> None:
        time.sleep(seconds)
        assert run.sup is not None
        run.sup.set_env(STREAMGUARD_CRASH_AT="", SG_CHAOS_HANDLER_CRASH="")
        run.sup.rolling_restart()
    return body


def zombie(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        for _ in range(max(1, p.repeats - 1)):
            run.worker_zombie(p.zombie)
            _calm(run, p)
    return body


def storm(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        run.rebalance_storm(p.storm, 3.0)
    return body


# -- message faults ---------------------------------------------------------------------------------------------
def message_faults(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        for kind, n in (("poison", 5), ("undecodable", 5), ("oversized", 5), ("hang", 3)):
            run.inject(kind, n)
            _calm(run, p)
    return body


def crash_poison(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        run.inject("crash", 1, "msg_crash")
        time.sleep(p.calm * 3)
        if p.name == "full":
            run.inject("crash", 2, "msg_crash")
            time.sleep(p.calm * 3)
    return body


def dlq_unavailable(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        t0 = time.time()
        assert run.driver is not None
        run.driver.inject("poison", 5)
        time.sleep(10.0)
        run.cc.create_topic(f"{run.topic}.dlq", run.spec.partitions, {"message.timestamp.type": "LogAppendTime"})
        run.faults.record("dlq_missing", f"{run.topic}.dlq", t0, time.time())
        _calm(run, p)
        t1 = time.time()
        run.driver.inject("poison", 5)
        run.proxy_down("net_down_all", None, 8.0)
        run.faults.record("dlq_unreachable", "proxy-all", t1, time.time())
        _calm(run, p)
    return body


# -- the soak: random faults with calm periods ------------------------------------------------------------------
def soak(p: Profile) -> Body:
    def body(run: ChaosRun) -> None:
        short = Profile("soak", kill_down=3.0, pause_short=2.0, pause_long=SESSION_TIMEOUT_S + 3.0,
                        partition_short=8.0, degraded=6.0, zombie=SESSION_TIMEOUT_S + 3.0)
        menu: list[Callable[[], None]] = [
            lambda: run.node_down(run.rnd.choice([1, 2, 3]), short.kill_down, "broker_kill_random"),
            lambda: run.node_pause(run.rnd.choice([1, 2, 3]), short.pause_short, "broker_pause_short"),
            lambda: run.node_pause(run.rnd.choice([1, 2, 3]), short.pause_long, "broker_pause_long"),
            lambda: run.proxy_down("net_down_one", [run.rnd.choice([1, 2, 3])], short.partition_short),
            lambda: run.toxic("net_blackhole_one", [run.rnd.choice([1, 2, 3])], short.partition_short, "timeout",
                              timeout=0),
            lambda: run.toxic("net_latency", None, short.degraded, "latency", latency=150, jitter=100),
            lambda: run.toxic("net_loss", None, short.degraded, "loss", percent=10),
            lambda: run.toxic("net_reset_peer", None, short.degraded, "reset_peer", timeout=1500),
            run.worker_kill,
            lambda: run.worker_zombie(short.zombie),
            lambda: run.inject("poison", 3),
            lambda: run.inject("undecodable", 2),
            lambda: run.inject("hang", 2),
        ]
        deadline = time.monotonic() + p.soak
        while time.monotonic() < deadline:
            run.rnd.choice(menu)()
            run.settle(60)
            time.sleep(run.rnd.uniform(2.0, 6.0))
    return body


# -- negative controls ------------------------------------------------------------------------------------------
def kill_workers_for(seconds: float, every: tuple[float, float]) -> Body:
    def body(run: ChaosRun) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(run.rnd.uniform(*every))
            run.worker_kill()
    return body


def crash_loop(seconds: float) -> Body:
    def body(run: ChaosRun) -> None:
        run.inject("crash", 1, "msg_crash")
        time.sleep(seconds)
    return body


def build(p: Profile) -> list[Scenario]:
    """Every scenario and control of the battery, in run order."""
    mixed = {"ok": 0.97, "poison": 0.02, "hang": 0.01}
    return [
        Scenario("leader_kill", "SIGKILL the leader of a partition (full: also the group coordinator and the "
                 "controller), restart it, wait for full ISRs", leader_kill(p), 1.5, {"mix": mixed}, smoke=True),
        Scenario("broker_pause", "SIGSTOP a leader shorter, then longer than the session timeout", broker_pause(p),
                 1.2, {"mix": mixed}),
        Scenario("net_partition", "client<->broker partition through the proxies: black hole and down, one broker "
                 "and all", net_partition(p), 2.0, {"mix": mixed, "liveness_bound_s": 90.0}),
        Scenario("isolated_leader", "a partition leader cut off from its peers (replication, KRaft quorum) while "
                 "clients still reach it; full: 30 s, 120 s, then the active controller", isolated_leader(p), 1.5,
                 {"mix": mixed, "liveness_bound_s": 90.0}),
        Scenario("degraded_network", "latency+jitter, bandwidth, slicer, reset_peer, 10% loss on every proxy",
                 degraded_network(p), 1.2, {"mix": mixed}),
        Scenario("worker_sigkill", "SIGKILL random workers (the supervisor restarts them)", worker_kill(p), 1.0,
                 {"mix": mixed}),
        Scenario("crash_handler_points", "workers exit inside the handler before the effect and after it (inside "
                 "the transaction, before the mark)", armed_window(p), 1.0,
                 {"mix": mixed, "handler_crash": "before_effect:0.002,after_effect_before_mark:0.002"}, smoke=True),
        Scenario("crash_before_commit", "workers exit right before an offset commit (STREAMGUARD_CRASH_AT)",
                 armed_window(p), 1.0, {"mix": mixed, "runtime_crash": "before_commit:0.03",
                                        "runtime_crash_kind": "worker_crash_before_commit"}),
        Scenario("crash_during_dlq_write", "workers exit between the DLQ produce and its ack", armed_window(p), 1.0,
                 {"mix": {"ok": 0.95, "poison": 0.05}, "runtime_crash": "during_dlq_write:0.08",
                  "runtime_crash_kind": "worker_crash_during_dlq_write"}),
        Scenario("zombie_worker", "SIGSTOP a worker past its session timeout, then SIGCONT", zombie(p), 1.0,
                 {"mix": mixed}),
        Scenario("rebalance_storm", "add and remove workers every 3 s", storm(p), 1.0, {"mix": mixed}),
        Scenario("message_faults", "poison, undecodable, oversized and hanging messages in bursts",
                 message_faults(p), 0.8, {}, smoke=True),
        Scenario("crash_poison", "a message that kills every worker that handles it", crash_poison(p), 0.8, {},
                 smoke=True),
        Scenario("dlq_unavailable", "poison while the DLQ topic is missing, then while every broker is "
                 "unreachable", dlq_unavailable(p), 0.8, {"precreate_dlq": False}),
        Scenario("soak", "random faults from every family with calm periods", soak(p), 3.0,
                 {"mix": mixed, "liveness_bound_s": 90.0}),
    ]


def controls(p: Profile) -> list[Scenario]:
    """The negative controls: deliberately broken set-ups the checker must catch."""
    secs = 8.0 if p.name == "smoke" else 20.0
    return [
        Scenario("control_commit_before_process", "a raw consumer that commits before it processes, SIGKILLed",
                 kill_workers_for(secs, (1.5, 3.0)), 0.3, {"worker": "bad", "workers": 2, "drain_timeout_s": 30.0},
                 control="lost"),
        Scenario("control_no_idempotency", "no idempotency store; crash after the effect",
                 armed_for(secs), 0.3, {"mode": "nostore", "handler_crash": "after_effect_before_mark:0.02",
                                       "workers": 2, "drain_timeout_s": 60.0}, control="duplicate_effects"),
        Scenario("control_non_atomic_sink", "effect committed on its own; crash between effect and mark",
                 armed_for(secs), 0.3, {"mode": "nonatomic", "handler_crash": "after_effect_before_mark:0.02",
                                       "workers": 2, "drain_timeout_s": 60.0}, control="duplicate_effects"),
        Scenario("control_in_memory_counter", "InMemoryStore (delivery counter dies with the process) and a "
                 "crash-poison message", crash_loop(25.0), 0.3,
                 {"mode": "memory", "workers": 1, "drain_timeout_s": 1.0}, control="crash_loop_overruns"),
    ]


CONTROL_PREDICATES: dict[str, Callable[[RunResult], bool]] = {
    "lost": lambda r: r.report.lost > 0 or r.report.commits_past_unresolved > 0,
    "duplicate_effects": lambda r: r.report.duplicate_effects > 0,
    "crash_loop_overruns": lambda r: r.report.crash_loop_overruns > 0,
}


def make_spec(s: Scenario, messages: int, rate: float, seed: int) -> RunSpec:
    return RunSpec(name=s.name, messages=messages, rate=rate, seed=seed, **s.spec)
