"""The Grafana dashboard in docs/ only queries metrics the worker really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from streamguard.observability.metrics import Metrics


def test_dashboard_metric_names_exist():
    dash = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"streamguard_[a-z_]+", e)}
    exported = set()
    for metric in Metrics().registry.collect():
        for sample in metric.samples:
            exported.add(sample.name)
        exported.add(metric.name)
        exported.add(metric.name + "_total")
        exported.add(metric.name + "_bucket")
    assert used, "no metrics in the dashboard"
    assert used <= exported, f"dashboard queries unknown metrics: {sorted(used - exported)}"
