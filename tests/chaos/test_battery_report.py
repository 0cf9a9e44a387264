"""The battery's report machinery without a broker: merging run histories keeps runs apart, the time series
and the stdlib PNG are well formed, the workload encodes each kind as the worker expects."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from streamguard.chaos.battery import family, merge, series
from streamguard.chaos.checker import check
from streamguard.chaos.pngplot import Panel, plot
from streamguard.chaos.workload import MAX_MESSAGE_BYTES, encode_message, partition_for

pytestmark = pytest.mark.timeout(30)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def _run(tmp: Path, name: str, t0: float) -> Any:
    d = tmp / name
    d.mkdir()
    _write(d / "sends.jsonl", [{"id": f"{name}-{i}", "key": "k", "kind": "ok", "acked": True, "partition": 0,
                                "offset": i, "t": t0 + i} for i in range(3)])
    _write(d / "effects.jsonl", [{"id": f"{name}-{i}", "key": "k", "partition": 0, "offset": i, "worker": "w",
                                  "t": t0 + i + 0.5} for i in range(3)])
    _write(d / "commits.jsonl", [{"t": t0 + 4, "partition": 0, "offset": 3}])
    _write(d / "log_end.jsonl", [{"partition": 0, "offset": 3}])
    _write(d / "faults.jsonl", [{"kind": "broker_kill_leader", "target": "broker-1", "t_start": t0 + 1,
                                 "t_end": t0 + 2}])
    return SimpleNamespace(name=name, dir=d)


def test_merged_runs_keep_their_partitions_apart(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "a", 1000.0), _run(tmp_path, "b", 1010.0)]
    history = merge(runs, tmp_path / "battery")
    report = check(history, max_deliveries=3)
    assert report.ok, report.table()
    assert report.stats["partitions"] == 2 and report.stats["messages"] == 6
    assert report.recovery["broker_kill_leader"]["n"] == 2
    throughput, lag = series(history, 1000.0, 20)
    assert sum(throughput) == 6
    assert lag[1] > 0 and lag[-1] == 0


def test_plot_is_a_valid_png(tmp_path: Path) -> None:
    out = tmp_path / "p.png"
    plot(out, "TITLE", [Panel("A", [0, 5, 3, 9], (0, 0, 255)), Panel("B", [1, 1, 0, 0], (255, 0, 0))],
         [(1.0, 2.0, (250, 200, 200))], [("BROKER", (250, 200, 200))], 4.0, [(0.5, "x")])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, tag = struct.unpack(">I4s", data[8:16])
    width, height = struct.unpack(">II", data[16:24])
    assert tag == b"IHDR" and length == 13 and width > 0 and height > 0
    idat = data.index(b"IDAT")
    (size,) = struct.unpack(">I", data[idat - 4:idat])
    assert len(zlib.decompress(data[idat + 4:idat + 4 + size])) == height * (1 + 3 * width)


def test_workload_kinds_encode_as_the_worker_expects() -> None:
    assert orjson.loads(encode_message("m1", "ok"))["kind"] == "ok"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(encode_message("m2", "undecodable"))
    assert len(encode_message("m3", "oversized")) > MAX_MESSAGE_BYTES
    assert {partition_for(f"k{i}", 6) for i in range(48)} == set(range(6))
    assert [family(k) for k in ("broker_pause_long", "net_loss", "worker_zombie", "msg_poison", "dlq_missing",
                                "rebalance_storm")] == ["broker", "net", "worker", "msg", "net", "worker"]
