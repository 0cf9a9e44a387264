"""The invariant checker passes a clean synthetic run and catches each injected violation (negative controls)."""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamguard.chaos.checker import COUNT_NAMES, check

pytestmark = pytest.mark.timeout(30)

T0 = 1000.0
MAX_DELIVERIES = 3
SPECIAL_KINDS = {5: "poison", 9: "crash", 13: "undecodable", 17: "oversized"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class History:
    """A clean run of 20 messages over 2 partitions and 4 keys, as a correct runtime would leave it."""

    def __init__(self) -> None:
        self.sends: list[dict[str, Any]] = []
        self.effects: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.dlq: list[dict[str, Any]] = []
        self.quarantine: list[dict[str, Any]] = []
        self.faults = [{"kind": "broker_kill", "target": "broker-1", "t_start": T0 + 0.5, "t_end": T0 + 1.0},
                       {"kind": "latency", "target": "proxy-2", "t_start": T0 + 1.2, "t_end": T0 + 1.5}]
        next_offset = {0: 0, 1: 0}
        t = T0
        for i in range(20):
            key, partition = f"k{i % 4}", (i % 4) % 2
            offset = next_offset[partition]
            next_offset[partition] += 1
            kind = SPECIAL_KINDS.get(i, "ok")
            send = {"id": f"m{i}", "key": key, "kind": kind, "acked": True, "partition": partition,
                    "offset": offset, "t": t, "key_b64": b64(key), "value_b64": b64(f"value-{i}"),
                    "headers": [["trace", b64(f"trace-{i}")], ["empty", None]]}
            self.sends.append(send)
            where = {"id": send["id"], "partition": partition, "offset": offset, "worker": "w1"}
            if kind == "ok":
                self.deliveries.append({**where, "t": t + 0.02})
                self.effects.append({**where, "key": key, "t": t + 0.05})
            elif kind == "poison":
                self.deliveries.append({**where, "t": t + 0.02})
                self.dlq.append(self._dead(send, len(self.dlq), t + 0.05))
            elif kind == "crash":
                self.deliveries.extend({**where, "t": t + 0.01 * n} for n in range(1, MAX_DELIVERIES + 1))
                self.quarantine.append(self._dead(send, len(self.quarantine), t + 0.05))
            else:  # undecodable / oversized: quarantined with zero handler attempts
                self.quarantine.append(self._dead(send, len(self.quarantine), t + 0.05))
            t += 0.1
        self.sends.append({"id": "never-acked", "key": "k0", "kind": "ok", "acked": False, "t": t})
        self.end = t
        self.log_end = dict(next_offset)
        self.commits = self.compute_commits()

    @staticmethod
    def _dead(send: dict[str, Any], offset: int, t: float) -> dict[str, Any]:
        runtime = [["streamguard.source.offset", b64(str(send["offset"]))], ["streamguard.error.type", b64("X")]]
        return {"partition": 0, "offset": offset, "t": t, "source_partition": send["partition"],
                "source_offset": send["offset"], "key_b64": send["key_b64"], "value_b64": send["value_b64"],
                "headers": [*runtime, *send["headers"]]}

    def by_id(self, msg_id: str) -> dict[str, Any]:
        return next(s for s in self.sends if s["id"] == msg_id)

    def effect(self, msg_id: str) -> dict[str, Any]:
        return next(e for e in self.effects if e["id"] == msg_id)

    def compute_commits(self) -> list[dict[str, Any]]:
        """What a correct runtime commits: per partition, the resolved prefix, sampled every 200 ms."""
        resolved: dict[tuple[int, int], float] = {}
        for row in [*self.dlq, *self.quarantine]:
            resolved[(row["source_partition"], row["source_offset"])] = row["t"]
        for row in self.effects:
            if self.by_id(row["id"])["kind"] == "ok":
                resolved.setdefault((row["partition"], row["offset"]), row["t"])
        rows = []
        sample = T0
        while sample < self.end + 1.0:
            for partition, end in self.log_end.items():
                committed = 0
                while committed < end and resolved.get((partition, committed), float("inf")) <= sample - 0.01:
                    committed += 1
                rows.append({"t": round(sample, 3), "partition": partition, "offset": committed})
            sample += 0.2
        return rows

    def write(self, directory: Path) -> Path:
        files = {"sends": self.sends, "effects": self.effects, "deliveries": self.deliveries, "dlq": self.dlq,
                 "quarantine": self.quarantine, "commits": self.commits, "faults": self.faults,
                 "log_end": [{"partition": p, "offset": o} for p, o in self.log_end.items()]}
        for name, rows in files.items():
            (directory / f"{name}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        return directory


def run(history: History, directory: Path, **kwargs: Any) -> Any:
    return check(history.write(directory), max_deliveries=MAX_DELIVERIES, **kwargs)


def assert_only(report: Any, name: str) -> None:
    assert report.counts[name] == 1, report.table()
    assert not report.ok


def test_clean_history_passes(tmp_path: Path) -> None:
    report = run(History(), tmp_path)
    assert report.ok, report.table()
    assert report.counts == dict.fromkeys(COUNT_NAMES, 0)
    assert report.liveness_s is not None and 0.0 < report.liveness_s < 1.5
    assert report.stats["messages"] == 21 and report.stats["acked"] == 20
    assert report.stats["dlq"] == 1 and report.stats["quarantined"] == 3
    assert report.stats["faults_by_kind"] == {"broker_kill": 1, "latency": 1}
    assert report.stats["redeliveries"] == 0
    for kind in ("broker_kill", "latency"):
        rec = report.recovery[kind]
        assert rec["n"] == 1 and rec["unrecovered"] == 0
        assert rec["max"] is not None and 0.0 <= rec["max"] < 0.5
    table = report.table()
    assert all(name in table for name in COUNT_NAMES) and table.endswith("PASS")
    assert orjson.loads(orjson.dumps(report.to_dict()))["ok"] is True


def test_row_order_in_the_files_does_not_matter(tmp_path: Path) -> None:
    history = History()
    expected = run(history, tmp_path).to_dict()
    rng = random.Random(7)
    for rows in (history.sends, history.effects, history.deliveries, history.commits, history.faults):
        rng.shuffle(rows)
    assert run(history, tmp_path).to_dict() == expected


def test_lost_message_is_caught(tmp_path: Path) -> None:
    history = History()
    history.effects.remove(history.effect("m6"))  # commits stay as they were: the runtime moved past it
    report = run(history, tmp_path)
    assert_only(report, "lost")
    assert "m6" in report.examples["lost"][0]


def test_duplicate_effect_is_caught(tmp_path: Path) -> None:
    history = History()
    history.effects.append({**history.effect("m7"), "worker": "w2", "t": history.end + 0.3})
    assert_only(run(history, tmp_path), "duplicate_effects")


def test_commit_past_an_unresolved_message_is_caught(tmp_path: Path) -> None:
    history = History()
    effect = history.effect("m10")  # partition 0, offset 5
    history.commits.append({"t": effect["t"] - 0.001, "partition": 0, "offset": effect["offset"] + 1})
    report = run(history, tmp_path)
    assert_only(report, "commits_past_unresolved")
    assert report.counts["lost"] == 0


def test_effect_of_a_poison_message_is_caught(tmp_path: Path) -> None:
    history = History()
    poison = history.by_id("m5")
    history.effects.append({"id": "m5", "key": poison["key"], "partition": poison["partition"],
                            "offset": poison["offset"], "worker": "w1", "t": poison["t"] + 0.05})
    assert_only(run(history, tmp_path), "poison_effects")


def test_crash_loop_overrun_is_caught(tmp_path: Path) -> None:
    history = History()
    crash = history.by_id("m9")
    history.deliveries.append({"id": "m9", "partition": crash["partition"], "offset": crash["offset"],
                               "worker": "w2", "t": crash["t"] + 0.04})
    assert_only(run(history, tmp_path), "crash_loop_overruns")


def test_dead_letter_byte_difference_is_caught(tmp_path: Path) -> None:
    history = History()
    history.dlq[0]["value_b64"] = b64("value-5!")
    report = run(history, tmp_path)
    assert_only(report, "dlq_fidelity_errors")
    assert "value differ" in report.examples["dlq_fidelity_errors"][0]


def test_dropped_original_header_in_quarantine_is_caught(tmp_path: Path) -> None:
    history = History()
    history.quarantine[0]["headers"] = [h for h in history.quarantine[0]["headers"] if h[0] != "trace"]
    assert_only(run(history, tmp_path), "dlq_fidelity_errors")


def test_original_values_argument_overrides_the_sends_file(tmp_path: Path) -> None:
    history = History()
    assert run(history, tmp_path).ok
    report = run(history, tmp_path, original_values={"m13": (b64("k1"), b64("something else"), [])})
    assert_only(report, "dlq_fidelity_errors")


def test_key_order_swap_is_caught(tmp_path: Path) -> None:
    history = History()
    first, second = history.effect("m0"), history.effect("m4")  # key k0, partition 0, offsets 0 and 2
    assert (first["key"], first["partition"]) == (second["key"], second["partition"])
    first["t"], second["t"] = second["t"], first["t"]
    history.commits = history.compute_commits()  # the runtime committed correctly; only the order is wrong
    report = run(history, tmp_path)
    assert_only(report, "key_order_violations")
    assert report.counts["commits_past_unresolved"] == 0


def test_unexpected_effect_is_caught(tmp_path: Path) -> None:
    history = History()
    history.effects.append({"id": "ghost", "key": "k9", "partition": 0, "offset": 99, "worker": "w1",
                            "t": history.end})
    assert_only(run(history, tmp_path), "unexpected_effects")


def test_effect_of_an_unacked_send_is_only_a_statistic(tmp_path: Path) -> None:
    history = History()
    history.effects.append({"id": "never-acked", "key": "k0", "partition": 0, "offset": 10, "worker": "w1",
                            "t": history.end})
    history.log_end[0] += 1
    history.commits.append({"t": history.end + 0.5, "partition": 0, "offset": history.log_end[0]})
    report = run(history, tmp_path)
    assert report.ok, report.table()
    assert report.stats["effects_of_unacked_sends"] == 1


def test_stalled_commit_fails_liveness(tmp_path: Path) -> None:
    history = History()
    for row in history.commits:
        if row["partition"] == 1:
            row["offset"] = min(row["offset"], 3)
    report = run(history, tmp_path)
    assert report.liveness_s is None
    assert report.counts == dict.fromkeys(COUNT_NAMES, 0)
    assert not report.ok
    assert report.recovery["latency"]["unrecovered"] == 1
    assert "never" in report.table() and report.table().endswith("FAIL")


def test_slow_recovery_beyond_the_bound_fails(tmp_path: Path) -> None:
    history = History()
    for row in history.commits:  # every commit lands 2 s late: recovery after the last send is slow
        row["t"] += 2.0
    report = run(history, tmp_path, liveness_bound_s=0.1)
    assert report.liveness_s is not None and report.liveness_s > 0.1
    assert not report.ok


def test_liveness_is_measured_from_the_final_send_when_production_outlasts_the_faults(tmp_path: Path) -> None:
    history = History()
    for fault in history.faults:  # faults long before the end of production
        fault["t_start"] -= 100.0
        fault["t_end"] -= 100.0
    report = run(history, tmp_path, liveness_bound_s=5.0)
    assert report.liveness_s is not None and report.liveness_s < 5.0


def test_redeliveries_after_an_effect_are_counted(tmp_path: Path) -> None:
    history = History()
    effect = history.effect("m2")
    history.deliveries.append({"id": "m2", "partition": effect["partition"], "offset": effect["offset"],
                               "worker": "w2", "t": effect["t"] + 1.0})
    report = run(history, tmp_path)
    assert report.ok and report.stats["redeliveries"] == 1


def test_a_malformed_line_names_its_file_and_line(tmp_path: Path) -> None:
    History().write(tmp_path)
    with (tmp_path / "effects.jsonl").open("ab") as fh:
        fh.write(b"{not json\n")
    with pytest.raises(ValueError, match=r"effects\.jsonl:\d+"):
        check(tmp_path, max_deliveries=MAX_DELIVERIES)
