"""The reliability battery: ``python -m streamguard.chaos.battery [--scenario NAME|all|smoke] [--messages N]``.

It starts one proxied 3-node Kafka cluster, runs the negative controls (deliberately broken set-ups the checker
must catch), then each scenario (a fault schedule against supervised ``streamguard run`` workers), checks every
run's histories with :func:`streamguard.chaos.checker.check`, merges the scenario histories into one battery
history (partitions renumbered ``100 * run + p``) and checks that too. Output in ``--out`` (default
``chaos-report``): one folder of JSONL histories per run, ``report.json``, ``report.txt`` (the one-screen table)
and ``battery.png`` (throughput and committed lag over time, fault windows shaded).

Exit code 0 only if every control was detected and every scenario run passed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamguard.chaos.checker import COUNT_NAMES, Report, check, read_jsonl
from streamguard.chaos.harness import MAX_DELIVERIES, ChaosCluster, RunResult, run_scenario
from streamguard.chaos.pngplot import Panel, plot
from streamguard.chaos.scenarios import CONTROL_PREDICATES, FULL, SMOKE, Profile, Scenario, build, controls, make_spec
from streamguard.chaos.workload import JsonlWriter

log = logging.getLogger("streamguard.chaos")

FAMILY_COLORS = {"broker": (250, 205, 205), "net": (255, 226, 180), "worker": (222, 205, 245),
                 "msg": (200, 235, 200), "other": (225, 225, 225)}


def family(kind: str) -> str:
    for prefix in ("broker", "net", "worker", "msg"):
        if kind.startswith(prefix):
            return prefix
    if kind.startswith("dlq"):
        return "net"
    if kind.startswith("rebalance"):
        return "worker"
    return "other"


# ---------------------------------------------------------------------------------------------------------------
# checks of the harness on top of the checker's
# ---------------------------------------------------------------------------------------------------------------
CRASH_LOOP_TYPE = "streamguard.errors.CrashLoopDetected"


def harness_checks(history: Path) -> dict[str, Any]:
    """What the checker does not count, from the same histories.

    - ``false_crash_loops`` (must be 0): messages quarantined as a crash loop (``CrashLoopDetected``) that are
      not crash messages. A crash loop is a message that kills or hangs its worker; anything else quarantined
      that way was blamed for something it did not do (and now waits for a person to release it).
    - ``duplicate_dead_letters`` (a statistic): extra DLQ/quarantine copies of one source record.
    """
    import base64

    kinds = {(int(r["partition"]), int(r["offset"])): (str(r["id"]), str(r.get("kind")))
             for r in read_jsonl(history / "sends.jsonl") if r.get("acked")}
    false_loops: dict[str, str] = {}
    copies: Counter[tuple[str, int, int]] = Counter()
    for name in ("dlq", "quarantine"):
        for row in read_jsonl(history / f"{name}.jsonl"):
            source = (int(row["source_partition"]), int(row["source_offset"]))
            copies[(name, *source)] += 1
            headers = {h[0]: h[1] for h in row.get("headers") or []}
            raw = headers.get("streamguard.error.type")
            etype = base64.b64decode(raw).decode("utf-8", "replace") if raw else ""
            msg_id, kind = kinds.get(source, ("?", "?"))
            if etype == CRASH_LOOP_TYPE and kind != "crash":
                false_loops[msg_id] = f"{msg_id} ({kind}) at {source[0]}/{source[1]} quarantined as a crash loop"
    return {"false_crash_loops": len(false_loops), "false_crash_loop_examples": sorted(false_loops.values())[:5],
            "duplicate_dead_letters": sum(n - 1 for n in copies.values() if n > 1)}


def run_ok(result: RunResult) -> bool:
    return result.report.ok and harness_checks(result.dir)["false_crash_loops"] == 0


# ---------------------------------------------------------------------------------------------------------------
# merging runs into one battery history
# ---------------------------------------------------------------------------------------------------------------
def merge(results: Sequence[RunResult], out: Path) -> Path:
    """One history folder for all scenario runs: partitions become ``100 * run index + partition``."""
    out.mkdir(parents=True, exist_ok=True)
    files = ("sends", "effects", "deliveries", "dlq", "quarantine", "commits", "log_end", "faults")
    for path in out.glob("*.jsonl"):
        path.unlink()
    writers = {name: JsonlWriter(out / f"{name}.jsonl") for name in files}
    try:
        for index, result in enumerate(results):
            base = 100 * index
            for name in files:
                for row in read_jsonl(result.dir / f"{name}.jsonl"):
                    if "partition" in row and row["partition"] is not None:
                        row["partition"] = base + int(row["partition"])
                    if "source_partition" in row:
                        row["source_partition"] = base + int(row["source_partition"])
                    if name == "faults":
                        row["run"] = result.name
                    writers[name].write(row)
    finally:
        for w in writers.values():
            w.close()
    return out


# ---------------------------------------------------------------------------------------------------------------
# the time series for the plot
# ---------------------------------------------------------------------------------------------------------------
def series(history: Path, t0: float, seconds: int) -> tuple[list[float], list[float]]:
    """Per second: messages resolved (effects + first DLQ/quarantine copy) and the committed lag (acked end
    minus committed offset, summed over partitions)."""
    n = max(1, seconds + 1)
    throughput = [0.0] * n
    for row in read_jsonl(history / "effects.jsonl"):
        s = int(float(row["t"]) - t0)
        if 0 <= s < n:
            throughput[s] += 1
    seen: set[tuple[int, int]] = set()
    for name in ("dlq", "quarantine"):
        for row in read_jsonl(history / f"{name}.jsonl"):
            src = (int(row["source_partition"]), int(row["source_offset"]))
            if src in seen:
                continue
            seen.add(src)
            s = int(float(row["t"]) - t0)
            if 0 <= s < n:
                throughput[s] += 1
    events: list[tuple[float, int, int, int]] = []  # (t, 0=acked end / 1=commit, partition, offset)
    for row in read_jsonl(history / "sends.jsonl"):
        if row.get("acked"):
            events.append((float(row["t"]), 0, int(row["partition"]), int(row["offset"]) + 1))
    for row in read_jsonl(history / "commits.jsonl"):
        events.append((float(row["t"]), 1, int(row["partition"]), int(row["offset"])))
    events.sort()
    end: dict[int, int] = defaultdict(int)
    committed: dict[int, int] = defaultdict(int)
    lag = [0.0] * n
    total = 0
    i = 0
    for s in range(n):
        limit = t0 + s + 1
        while i < len(events) and events[i][0] < limit:
            _, what, p, off = events[i]
            before = max(0, end[p] - committed[p])
            if what == 0:
                end[p] = max(end[p], off)
            else:
                committed[p] = max(committed[p], off)
            total += max(0, end[p] - committed[p]) - before
            i += 1
        lag[s] = float(total)
    return throughput, lag


# ---------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------
def _fmt(v: float | int | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(results: Sequence[RunResult], control_results: Sequence[tuple[Scenario, RunResult, bool]],
          merged: Report | None, history: Path, duplicate_skipped: int, wall_s: float) -> str:
    lines = []
    lines.append(f"streamguard chaos battery  ({wall_s / 60:.1f} min wall clock)")
    lines.append("")
    lines.append(f"{'negative control':<30} {'expects':<20} {'found':<58} detected")
    for s, r, ok in control_results:
        found = ", ".join(f"{k}={v}" for k, v in r.report.counts.items() if v) or "nothing"
        lines.append(f"{s.name:<30} {s.control or '':<20} {found[:58]:<58} {'yes' if ok else 'NO'}")
    lines.append("")
    lines.append(f"{'#':>2} {'scenario':<24} {'msgs':>7} {'faults':>6} {'violations':>10} {'false-CL':>8} "
                 f"{'live s':>7} {'restarts':>8} {'dup-skip':>8} {'gaps':>5} {'drained':>7} result")
    for i, r in enumerate(results, 1):
        v = sum(r.report.counts.values())
        extra = harness_checks(r.dir)
        lines.append(f"{i:>2} {r.name:<24} {r.report.stats.get('messages', 0):>7} {r.report.stats.get('faults', 0):>6} "
                     f"{v:>10} {extra['false_crash_loops']:>8} {_fmt(r.report.liveness_s):>7} {r.restarts:>8} "
                     f"{r.duplicate_skipped:>8} {r.sequence_gaps:>5} {'yes' if r.drained else 'NO':>7} "
                     f"{'PASS' if run_ok(r) else 'FAIL'}")
    if merged is not None:
        st = merged.stats
        lines.append("")
        lines.append(f"messages {st['messages']} (acked {st['acked']}; kinds: "
                     + " ".join(f"{k}={v}" for k, v in sorted(st['kinds'].items())) + ")")
        lines.append(f"effects {st['effects']}  dlq {st['dlq']}  quarantined {st['quarantined']}  "
                     f"handler deliveries {st['deliveries']}  unacked sends {sum(r.unacked_sends for r in results)}  "
                     f"sequence gaps seen by the runtime {sum(r.sequence_gaps for r in results)}")
        lines.append(f"redeliveries suppressed by idempotency: {duplicate_skipped} skipped before the handler "
                     f"(runtime metric) + {st['redeliveries']} refused inside the handler's transaction "
                     f"(checker: deliveries after the first effect)")
        extra = harness_checks(history)
        lines.append(f"duplicate dead letters (extra DLQ/quarantine copies of one record): "
                     f"{extra['duplicate_dead_letters']}")
        lines.append("")
        lines.append(f"{'invariant':<26} {'count':>7}")
        for name, count in merged.counts.items():
            lines.append(f"{name:<26} {count:>7}  {'ok' if count == 0 else 'FAIL'}")
        fl = extra["false_crash_loops"]
        lines.append(f"{'false_crash_loops':<26} {fl:>7}  {'ok' if fl == 0 else 'FAIL'}  (harness check)"
                     + (f"  e.g. {extra['false_crash_loop_examples'][0]}" if fl else ""))
        lines.append("")
        lines.append(f"faults injected: {st['faults']}")
        lines.append(f"{'fault kind':<38} {'n':>4} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'unrecov':>7}")
        for kind, rec in sorted(merged.recovery.items()):
            lines.append(f"{kind:<38} {rec['n']!s:>4} {_fmt(rec['p50']):>7} {_fmt(rec['p95']):>7} "
                         f"{_fmt(rec['max']):>7} {rec['unrecovered']!s:>7}")
    ok = all(d for _, _, d in control_results) and all(run_ok(r) for r in results)
    lines.append("")
    lines.append("BATTERY " + ("PASS" if ok else "FAIL") + (" (controls all detected)" if control_results and all(
        d for _, _, d in control_results) else ""))
    return "\n".join(lines)


def write_plot(history: Path, results: Sequence[RunResult], out: Path, t0: float, t1: float) -> None:
    seconds = max(1, math.ceil(t1 - t0))
    throughput, lag = series(history, t0, seconds)
    windows = []
    for row in read_jsonl(history / "faults.jsonl"):
        a, b = float(row["t_start"]) - t0, float(row["t_end"]) - t0
        windows.append((a, max(b, a + 1.0), FAMILY_COLORS[family(str(row["kind"]))]))
    markers = [(r.started - t0, str(i)) for i, r in enumerate(results, 1)]
    legend = [(name, color) for name, color in FAMILY_COLORS.items() if name != "other"]
    panels = [Panel("RESOLVED MESSAGES PER SECOND", throughput, (30, 90, 200)),
              Panel("COMMITTED LAG (MESSAGES)", lag, (200, 60, 40))]
    plot(out, "STREAMGUARD CHAOS BATTERY  (NUMBERS: SCENARIOS OF THE TABLE)", panels,
         windows, legend, float(seconds), markers)


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------
def select(name: str, profile: Profile) -> tuple[list[Scenario], list[Scenario]]:
    every, ctrls = build(profile), controls(profile)
    if name == "all":
        return every, ctrls
    if name == "smoke":
        return [s for s in every if s.smoke], ctrls
    if name == "controls":
        return [], ctrls
    chosen = [s for s in every + ctrls if s.name == name]
    if not chosen:
        raise SystemExit(f"unknown scenario {name!r}; one of: all, smoke, controls, "
                         + ", ".join(s.name for s in every + ctrls))
    return [s for s in chosen if s.control is None], [s for s in chosen if s.control is not None]


def run_battery(scenario: str = "all", messages: int = 50_000, out: Path = Path("chaos-report"),
                rate: float = 120.0, control_messages: int = 600, skip_controls: bool = False,
                profile: Profile | None = None) -> dict[str, Any]:
    """Run the battery and write the report; returns report.json's content."""
    prof = profile or (SMOKE if scenario == "smoke" else FULL)
    scenarios, ctrls = select(scenario, prof)
    if skip_controls:
        ctrls = []
    out.mkdir(parents=True, exist_ok=True)
    weights = sum(s.weight for s in scenarios) or 1.0
    t_begin = time.time()
    results: list[RunResult] = []
    control_results: list[tuple[Scenario, RunResult, bool]] = []
    with ChaosCluster() as cc:
        log.info("cluster up: direct %s, proxied %s", cc.bootstrap, cc.proxied_bootstrap)
        for i, s in enumerate(ctrls):
            spec = make_spec(s, control_messages, min(rate, 80.0), 100 + i)
            r = run_scenario(cc, spec, s.body, out)
            detected = CONTROL_PREDICATES[s.control or ""](r)
            control_results.append((s, r, detected))
            log.info("control %s: %s (%s)", s.name, "detected" if detected else "NOT DETECTED", r.report.counts)
        for i, s in enumerate(scenarios):
            n = max(200, int(messages * s.weight / weights))
            r = run_scenario(cc, make_spec(s, n, rate, 1 + i), s.body, out)
            results.append(r)
            log.info("scenario %s: %s %s liveness=%s", s.name, "PASS" if r.report.ok else "FAIL", r.report.counts,
                     r.report.liveness_s)
    t_end = time.time()
    return write_report(out, scenario, prof.name, results, control_results, t_end - t_begin)


def write_report(out: Path, scenario: str, profile: str, results: Sequence[RunResult],
                 control_results: Sequence[tuple[Scenario, RunResult, bool]], wall_s: float) -> dict[str, Any]:
    """Merge, check, plot and tabulate finished runs into ``out``; returns report.json's content."""
    merged_report: Report | None = None
    duplicate_skipped = sum(r.duplicate_skipped for r in results)
    if results:
        history = merge(results, out / "battery")
        merged_report = check(history, max_deliveries=MAX_DELIVERIES,
                              liveness_bound_s=max(r.report.liveness_bound_s for r in results))
        write_plot(history, results, out / "battery.png", results[0].started, results[-1].finished)
    text = table(results, control_results, merged_report, out / "battery", duplicate_skipped, wall_s)
    (out / "report.txt").write_text(text + "\n")
    ok = all(d for _, _, d in control_results) and all(run_ok(r) for r in results)
    report = {
        "ok": ok, "scenario": scenario, "profile": profile, "wall_seconds": round(wall_s, 1),
        "controls": [{"name": s.name, "expects": s.control, "detected": d, **r.summary()}
                     for s, r, d in control_results],
        "scenarios": [{**r.summary(), "harness_checks": harness_checks(r.dir), "ok": run_ok(r)} for r in results],
        "battery": None if merged_report is None else {
            **merged_report.to_dict(), "duplicate_skipped_by_runtime": duplicate_skipped,
            "harness_checks": harness_checks(out / "battery"),
            "faults_total": merged_report.stats.get("faults", 0),
            "fault_families": dict(Counter(family(k) for k in merged_report.stats.get("faults_by_kind", {})
                                           for _ in range(merged_report.stats["faults_by_kind"][k]))),
        },
        "invariants": list(COUNT_NAMES),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(text)
    return report


def rejudge(out: Path) -> dict[str, Any]:
    """Re-run the checker (and rebuild table, plot and JSON) over the histories of an earlier battery."""
    old = json.loads((out / "report.json").read_text())
    every = {s.name: s for s in build(FULL) + controls(FULL)}

    def result(summary: dict[str, Any]) -> RunResult:
        run_dir = out / summary["name"]
        bound = float(summary["report"]["liveness_bound_s"])
        return RunResult(summary["name"], run_dir, check(run_dir, max_deliveries=MAX_DELIVERIES,
                                                           liveness_bound_s=bound),
                         int(summary["duplicate_skipped_by_runtime"]), int(summary.get("sequence_gaps_by_runtime", 0)),
                         int(summary.get("unacked_sends", 0)), int(summary["worker_restarts"]),
                         [tuple(e) for e in summary["unexpected_worker_exits"]], float(summary["started"]),
                         float(summary["finished"]), bool(summary["drained"]), int(summary["sampler_errors"]),
                         summary.get("driver_error"))

    results = [result(s) for s in old["scenarios"]]
    control_results = []
    for c in old["controls"]:
        r = result(c)
        s = every[c["name"]]
        control_results.append((s, r, CONTROL_PREDICATES[s.control or ""](r)))
    return write_report(out, old["scenario"], old["profile"], results, control_results, float(old["wall_seconds"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamguard.chaos.battery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="all", help="all | smoke | controls | a scenario or control name")
    parser.add_argument("--messages", type=int, default=50_000, help="messages over all scenarios (split by weight)")
    parser.add_argument("--rate", type=float, default=120.0, help="messages per second while a scenario runs")
    parser.add_argument("--out", type=Path, default=Path("chaos-report"))
    parser.add_argument("--profile", choices=("smoke", "full"), default=None,
                        help="fault durations (default: smoke for --scenario smoke, else full)")
    parser.add_argument("--no-controls", action="store_true", help="skip the negative controls (not a valid run)")
    parser.add_argument("--rejudge", action="store_true",
                        help="do not run anything: re-check the histories in --out and rewrite the report")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        log.setLevel(logging.INFO)
    if args.rejudge:
        return 0 if rejudge(args.out)["ok"] else 1
    profile = {"smoke": SMOKE, "full": FULL}.get(args.profile or "")
    report = run_battery(args.scenario, args.messages, args.out, args.rate, skip_controls=args.no_controls,
                         profile=profile)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
