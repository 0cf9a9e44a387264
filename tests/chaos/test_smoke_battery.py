"""The chaos battery's smoke subset on a proxied 3-node cluster: the checker catches each negative control, and
the real runtime keeps every invariant at 0 through a leader kill, handler crash points and poison messages.

One cluster for the module (started here, stopped at the end); everything a scenario starts stops inside it.
The full battery is ``make chaos`` (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamguard.chaos.battery import harness_checks
from streamguard.chaos.harness import ChaosCluster, RunResult, run_scenario
from streamguard.chaos.scenarios import CONTROL_PREDICATES, SMOKE, Scenario, build, controls, make_spec

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.timeout(240)]

SCENARIOS = {s.name: s for s in build(SMOKE)}
CONTROLS = {s.name: s for s in controls(SMOKE)}


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[ChaosCluster]:
    with ChaosCluster() as cc:
        yield cc


def _run(cc: ChaosCluster, scenario: Scenario, out: Path, messages: int, rate: float) -> RunResult:
    return run_scenario(cc, make_spec(scenario, messages, rate, seed=7), scenario.body, out)


def _explain(result: RunResult) -> str:
    return f"{result.name}: histories in {result.dir}\n{result.report.table()}"


@pytest.mark.parametrize("name", list(CONTROLS))
def test_negative_control_is_detected(chaos_cluster: ChaosCluster, tmp_path: Path, name: str) -> None:
    scenario = CONTROLS[name]
    result = _run(chaos_cluster, scenario, tmp_path, messages=500, rate=60.0)
    assert CONTROL_PREDICATES[scenario.control or ""](result), _explain(result)
    assert not result.report.ok, _explain(result)


@pytest.mark.parametrize("name", ["leader_kill", "crash_handler_points", "message_faults"])
def test_runtime_keeps_every_invariant(chaos_cluster: ChaosCluster, tmp_path: Path, name: str) -> None:
    result = _run(chaos_cluster, SCENARIOS[name], tmp_path, messages=1200, rate=100.0)
    assert result.report.stats["faults"] > 0, _explain(result)
    assert result.report.counts == dict.fromkeys(result.report.counts, 0), _explain(result)
    assert result.report.liveness_ok, _explain(result)
    assert harness_checks(result.dir)["false_crash_loops"] == 0, harness_checks(result.dir)
    assert result.drained, _explain(result)
    assert not result.unexpected_exits, _explain(result)
