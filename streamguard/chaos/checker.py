"""The independent checker of "nothing lost, nothing twice" over the JSONL histories of a chaos run.

Independent on purpose: it imports nothing from the runtime it judges (stdlib + orjson only) and reads only
what the harness recorded -- what producers got acked, what side effects landed in the database, what was read
back from the DLQ and quarantine topics, and committed offsets sampled by an AdminClient -- so a bug in the
runtime cannot hide itself by also being in the checker.

Files in ``history_dir`` (one JSON object per line; a missing file counts as empty):

- ``sends.jsonl``       ``{id, key, kind, acked, partition?, offset?, t, key_b64?, value_b64?, headers?}``
- ``effects.jsonl``     ``{id, key, partition, offset, worker, t}`` one row per applied side effect
- ``deliveries.jsonl``  ``{id, partition, offset, worker, t}`` one row per handler invocation
- ``dlq.jsonl``, ``quarantine.jsonl``
                        ``{partition, offset, t, source_partition, source_offset, key_b64, value_b64, headers}``
- ``commits.jsonl``     ``{t, partition, offset}`` sampled committed offsets (offset = next to consume)
- ``log_end.jsonl``     ``{partition, offset}`` final log end offsets
- ``faults.jsonl``      ``{kind, target, t_start, t_end}``

Invariants (each count must be 0):

- ``lost``: an acked message resolved by none of: an effect (``ok``/``hang`` only), a DLQ or a quarantine record.
  Poison kinds (``poison``, ``crash``, ``undecodable``, ``oversized``) resolve only by DLQ/quarantine.
- ``duplicate_effects``: extra applications: an id applied n > 1 times adds n - 1.
- ``commits_past_unresolved``: commit samples ``(t, p, o)`` with some acked message in ``p`` below ``o`` that
  was not resolved by time ``t`` (same resolution rule as ``lost``; record times, same host clock assumed).
- ``poison_effects``: effect rows of poison-kind ids.
- ``crash_loop_overruns``: handler deliveries of a ``crash`` message beyond ``max_deliveries`` (summed).
- ``dlq_fidelity_errors``: DLQ/quarantine records whose key, value or original headers (all but
  ``streamguard.*``) differ from what was sent; records whose original bytes are unknown are not checked.
- ``key_order_violations``: per (partition, key), effects whose first application happened before that of a
  lower-offset message of the same key (a message counts once, however far it jumped ahead).
- ``unexpected_effects``: distinct effect ids that were never sent (an unacked send may still have landed,
  so its effect is only reported as ``effects_of_unacked_sends``).

Liveness: seconds from the last fault's ``t_end`` (no faults: the last acked send) until the sampled commits
reach ``log_end`` on every partition; ``None`` if they never do. It fails if ``None`` or above the bound.

Recovery per fault kind (a statistic, not an invariant): for each fault, the seconds from its ``t_end`` until
the sampled commits reach, on every partition, the log end *as the producer knew it at t_end* (highest acked
offset + 1 among sends with ``t <= t_end``) -- the log end at that instant is not recorded, and acked sends are
its best lower bound. Percentiles are nearest-rank.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["COUNT_NAMES", "CRASH_KINDS", "POISON_KINDS", "Report", "check", "read_jsonl"]

#: Kinds whose only correct outcome is a DLQ or quarantine record (never a side effect).
POISON_KINDS = frozenset({"poison", "crash", "undecodable", "oversized"})
#: Kinds whose handler deliveries are capped by ``max_deliveries`` (the crash-loop detector).
CRASH_KINDS = frozenset({"crash"})
#: Headers the runtime adds to a dead letter; everything else must be the original's.
RUNTIME_HEADER_PREFIX = "streamguard."
COUNT_NAMES = ("lost", "duplicate_effects", "commits_past_unresolved", "poison_effects", "crash_loop_overruns",
               "dlq_fidelity_errors", "key_order_violations", "unexpected_effects")
_EXAMPLES = 5

Original = tuple[str | None, str | None, list[Any]]


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a missing file is empty, a bad line fails loudly with its position."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            yield row


@dataclass
class Report:
    """What the checker found; ``ok`` only when every count is 0 and liveness is within its bound."""

    lost: int = 0
    duplicate_effects: int = 0
    commits_past_unresolved: int = 0
    poison_effects: int = 0
    crash_loop_overruns: int = 0
    dlq_fidelity_errors: int = 0
    key_order_violations: int = 0
    unexpected_effects: int = 0
    liveness_s: float | None = None
    liveness_bound_s: float = 60.0
    stats: dict[str, Any] = field(default_factory=dict)
    recovery: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in COUNT_NAMES}

    @property
    def liveness_ok(self) -> bool:
        return self.liveness_s is not None and self.liveness_s <= self.liveness_bound_s

    @property
    def ok(self) -> bool:
        return self.liveness_ok and not any(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.counts, "liveness_s": self.liveness_s,
                "liveness_bound_s": self.liveness_bound_s, "stats": dict(self.stats),
                "recovery": {k: dict(v) for k, v in self.recovery.items()},
                "examples": {k: list(v) for k, v in self.examples.items()}}

    def table(self) -> str:
        """One screen: invariants first (with a first example when violated), then run statistics."""
        lines = [f"{'invariant':<26} {'count':>8}  status", "-" * 60]
        for name, count in self.counts.items():
            hint = f"  e.g. {self.examples[name][0]}" if count and self.examples.get(name) else ""
            lines.append(f"{name:<26} {count:>8}  {'ok' if count == 0 else 'FAIL'}{hint}")
        live = "never" if self.liveness_s is None else f"{self.liveness_s:.1f}s"
        lines.append(f"{'liveness':<26} {live:>8}  {'ok' if self.liveness_ok else 'FAIL'} "
                     f"(bound {self.liveness_bound_s:g}s)")
        lines.append("-" * 60)
        for name, value in self.stats.items():
            if isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
                lines.append(f"{name:<26} {value}")
            else:
                lines.append(f"{name:<26} {value:>8}")
        if self.recovery:
            lines.append("")
            lines.append(f"{'fault kind':<18} {'n':>4} {'p50 s':>8} {'p95 s':>8} {'max s':>8} {'unrecovered':>12}")
            for kind, rec in sorted(self.recovery.items()):
                lines.append(f"{kind:<18} {rec['n']!s:>4} {_fmt(rec['p50']):>8} {_fmt(rec['p95']):>8} "
                             f"{_fmt(rec['max']):>8} {rec['unrecovered']!s:>12}")
        lines.append("")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def _fmt(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _headers(raw: Iterable[Any] | None) -> list[tuple[str, str | None]]:
    return [(str(h[0]), None if h[1] is None else str(h[1])) for h in (raw or [])]


def _catch_up_time(commits: list[dict[str, Any]], targets: dict[int, int], since: float) -> float | None:
    """First sample time >= ``since`` at which every partition's latest commit reached its target, or None."""
    pending = {p for p, end in targets.items() if end > 0}
    latest: dict[int, int] = {}

    def caught_up() -> bool:
        return all(latest.get(p, 0) >= targets[p] for p in pending)

    checked_at_since = False
    for row in commits:  # sorted by t
        t = float(row["t"])
        if t >= since and not checked_at_since:
            checked_at_since = True
            if caught_up():
                return since
        latest[int(row["partition"])] = max(latest.get(int(row["partition"]), 0), int(row["offset"]))
        if t >= since and caught_up():
            return t
    if not checked_at_since and caught_up():
        return since
    return None


def check(history_dir: Path, *, max_deliveries: int, liveness_bound_s: float = 60.0,
          original_values: dict[str, Original] | None = None) -> Report:
    """Judge one run's histories; see the module docstring for each invariant's exact definition."""
    history_dir = Path(history_dir)
    report = Report(liveness_bound_s=liveness_bound_s)
    examples: dict[str, list[str]] = defaultdict(list)

    def violation(name: str, text: str, n: int = 1) -> None:
        setattr(report, name, getattr(report, name) + n)
        if len(examples[name]) < _EXAMPLES:
            examples[name].append(text)

    # -- load ------------------------------------------------------------------------------------------------
    sends: dict[str, dict[str, Any]] = {}
    for row in read_jsonl(history_dir / "sends.jsonl"):
        previous = sends.get(row["id"])
        if previous is None or (row.get("acked") and not previous.get("acked")):
            sends[row["id"]] = row  # an acked record of a retried send wins
    acked = {i: s for i, s in sends.items() if s.get("acked")}
    by_position = {(int(s["partition"]), int(s["offset"])): i for i, s in acked.items()}
    originals: dict[str, Original] = {
        i: (s.get("key_b64"), s.get("value_b64"), list(s.get("headers") or []))
        for i, s in sends.items() if "value_b64" in s or "key_b64" in s or "headers" in s}
    originals.update(original_values or {})

    effects = sorted(read_jsonl(history_dir / "effects.jsonl"), key=lambda r: float(r["t"]))
    deliveries = list(read_jsonl(history_dir / "deliveries.jsonl"))
    dead = {"dlq": list(read_jsonl(history_dir / "dlq.jsonl")),
            "quarantine": list(read_jsonl(history_dir / "quarantine.jsonl"))}
    commits = sorted(read_jsonl(history_dir / "commits.jsonl"), key=lambda r: float(r["t"]))
    log_end = {int(r["partition"]): int(r["offset"]) for r in read_jsonl(history_dir / "log_end.jsonl")}
    faults = list(read_jsonl(history_dir / "faults.jsonl"))

    first_effect: dict[str, dict[str, Any]] = {}
    applied: Counter[str] = Counter()
    for row in effects:
        applied[row["id"]] += 1
        first_effect.setdefault(row["id"], row)

    dead_at: dict[tuple[int, int], float] = {}  # source position -> earliest DLQ/quarantine record time
    for topic, rows in dead.items():
        for row in rows:
            source = (int(row["source_partition"]), int(row["source_offset"]))
            dead_at[source] = min(dead_at.get(source, math.inf), float(row["t"]))
            msg_id = by_position.get(source)
            original = originals.get(msg_id) if msg_id is not None else None
            if original is None:
                continue
            key, value, headers = original
            kept = [h for h in _headers(row.get("headers")) if not h[0].startswith(RUNTIME_HEADER_PREFIX)]
            diffs = [name for name, same in (("key", row.get("key_b64") == key),
                                             ("value", row.get("value_b64") == value),
                                             ("headers", kept == _headers(headers))) if not same]
            if diffs:
                violation("dlq_fidelity_errors", f"{topic} record {row['partition']}/{row['offset']} of {msg_id}: "
                                                 f"{', '.join(diffs)} differ")

    # -- resolution: lost, and the time each acked message became resolved -----------------------------------
    resolved_at: dict[str, float] = {}
    for msg_id, send in acked.items():
        position = (int(send["partition"]), int(send["offset"]))
        candidates = [dead_at.get(position, math.inf)]
        if send.get("kind") not in POISON_KINDS and msg_id in first_effect:
            candidates.append(float(first_effect[msg_id]["t"]))
        resolved_at[msg_id] = min(candidates)
        if resolved_at[msg_id] == math.inf:
            violation("lost", f"{msg_id} ({send.get('kind')}) at {position[0]}/{position[1]}")

    # -- side effects ----------------------------------------------------------------------------------------
    for msg_id, n in applied.items():
        if n > 1:
            violation("duplicate_effects", f"{msg_id} applied {n} times", n - 1)
        if msg_id not in sends:
            violation("unexpected_effects", f"{msg_id} was never sent")
    for row in effects:
        kind = sends.get(row["id"], {}).get("kind")
        if kind in POISON_KINDS:
            violation("poison_effects", f"{row['id']} ({kind}) applied by {row.get('worker')}")

    # -- key order: per (partition, key), first applications in offset order --------------------------------
    groups: dict[tuple[int, str], list[tuple[int, float, str]]] = defaultdict(list)
    for msg_id, row in first_effect.items():
        groups[(int(row["partition"]), str(row["key"]))].append((int(row["offset"]), float(row["t"]), msg_id))
    for (partition, key), items in groups.items():
        latest = -math.inf
        latest_id = ""
        for _offset, t, msg_id in sorted(items):
            if t < latest:
                violation("key_order_violations", f"key {key!r} p{partition}: {msg_id} applied before {latest_id}")
            else:
                latest, latest_id = t, msg_id

    # -- crash loops and redeliveries ------------------------------------------------------------------------
    delivered: Counter[str] = Counter(row["id"] for row in deliveries)
    for msg_id, n in delivered.items():
        if sends.get(msg_id, {}).get("kind") in CRASH_KINDS and n > max_deliveries:
            violation("crash_loop_overruns", f"{msg_id} delivered {n} times (max {max_deliveries})",
                      n - max_deliveries)
    redeliveries = sum(1 for row in deliveries
                       if row["id"] in first_effect and float(row["t"]) > float(first_effect[row["id"]]["t"]))

    # -- commits never pass an unresolved message ------------------------------------------------------------
    per_partition: dict[int, list[tuple[int, float, str]]] = defaultdict(list)
    for msg_id, send in acked.items():
        per_partition[int(send["partition"])].append((int(send["offset"]), resolved_at[msg_id], msg_id))
    heaps = {p: sorted(items) for p, items in per_partition.items()}  # a sorted list is a valid min-heap
    for row in commits:
        t, partition, offset = float(row["t"]), int(row["partition"]), int(row["offset"])
        heap = heaps.get(partition, [])
        while heap and heap[0][1] <= t:  # resolved by now; commit samples come in time order
            heapq.heappop(heap)
        if heap and offset > heap[0][0]:
            violation("commits_past_unresolved",
                      f"p{partition} committed {offset} at t={t:.3f} past unresolved {heap[0][2]} @{heap[0][0]}")

    # -- liveness and recovery -------------------------------------------------------------------------------
    # measured from when the final log end exists: the last fault healed AND the last message was sent (a run
    # that keeps producing after its last fault cannot reach its final log end before its final send)
    last_send = max((float(s["t"]) for s in acked.values()), default=0.0)
    healed = max([last_send, *(float(f["t_end"]) for f in faults)])
    done = _catch_up_time(commits, log_end, healed)
    report.liveness_s = None if done is None else max(0.0, done - healed)

    recovery_times: dict[str, list[float]] = defaultdict(list)
    unrecovered: Counter[str] = Counter()
    for fault in faults:
        t_end = float(fault["t_end"])
        targets: dict[int, int] = {}
        for send in acked.values():
            if float(send["t"]) <= t_end:
                p = int(send["partition"])
                targets[p] = max(targets.get(p, 0), int(send["offset"]) + 1)
        caught = _catch_up_time(commits, targets, t_end)
        if caught is None:
            unrecovered[fault["kind"]] += 1
        else:
            recovery_times[fault["kind"]].append(caught - t_end)
    fault_kinds = Counter(str(f["kind"]) for f in faults)
    for kind in fault_kinds:
        times = sorted(recovery_times[kind])
        report.recovery[kind] = {"n": fault_kinds[kind], "p50": _percentile(times, 0.5),
                                 "p95": _percentile(times, 0.95), "max": times[-1] if times else None,
                                 "unrecovered": unrecovered[kind]}

    unacked_applied = sum(1 for i in applied if i in sends and i not in acked)
    report.stats = {
        "messages": len(sends), "acked": len(acked), "effects": len(effects), "dlq": len(dead["dlq"]),
        "quarantined": len(dead["quarantine"]), "deliveries": len(deliveries), "redeliveries": redeliveries,
        "commit_samples": len(commits), "partitions": len(log_end), "faults": len(faults),
        "effects_of_unacked_sends": unacked_applied,
        "kinds": dict(Counter(str(s.get("kind")) for s in sends.values())),
        "faults_by_kind": dict(fault_kinds),
    }
    report.examples = dict(examples)
    return report
