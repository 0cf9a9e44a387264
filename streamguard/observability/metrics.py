"""Every Prometheus metric streamguard exports, defined in this one place.

Metrics live on a dedicated ``CollectorRegistry`` (not the process-global one) so several workers or tests
in one process never collide. Labels are bounded: topic, partition, outcome, breaker name and fixed kinds;
never message keys or ids, which would grow the series count without limit.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BREAKER_STATE_VALUES", "COMMIT_RESULTS", "OUTCOMES", "Metrics"]

OUTCOMES = frozenset({"ok", "retried", "dead_lettered", "quarantined", "duplicate_skipped", "failed"})
"""The ``outcome`` label values of ``streamguard_messages_total``."""

COMMIT_RESULTS = frozenset({"ok", "failed", "skipped"})

BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
"""``streamguard_breaker_state`` values by ``BreakerState`` value."""

# Handler durations span fast in-memory handlers to slow external calls with timeouts.
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The worker's metrics as attributes; pass the registry that ``HealthServer`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "streamguard_messages_total", "Messages resolved, by how they were resolved.", ["topic", "outcome"],
            registry=r,
        )
        self.handler_duration = Histogram(
            "streamguard_handler_duration_seconds", "Time a handler ran for one message (every attempt).",
            ["topic"], buckets=_DURATION_BUCKETS, registry=r,
        )
        self.inflight_messages = Gauge(
            "streamguard_inflight_messages", "Messages taken from a partition and not yet resolved.",
            ["topic", "partition"], registry=r,
        )
        self.paused_partitions = Gauge(
            "streamguard_paused_partitions", "Partitions paused for backpressure or an open breaker.", registry=r,
        )
        self.commits = Counter(
            "streamguard_commits_total", "Offset commits, by result.", ["result"], registry=r,
        )
        self.consumer_lag = Gauge(
            "streamguard_consumer_lag_messages", "High watermark minus committed offset.", ["topic", "partition"],
            registry=r,
        )
        self.retries = Counter(
            "streamguard_retries_total", "Retries scheduled by the retry policy.", ["topic"], registry=r,
        )
        self.dlq_produce_pending = Gauge(
            "streamguard_dlq_produce_pending", "DLQ/quarantine produces not yet acknowledged by the broker.",
            registry=r,
        )
        self.breaker_state = Gauge(
            "streamguard_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["breaker"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "streamguard_breaker_transitions_total", "Circuit breaker transitions, by new state.", ["breaker", "to"],
            registry=r,
        )
        self.sequence_gaps = Counter(
            "streamguard_sequence_gaps_total",
            "Records missing from a producer's per-partition sequence (lost before Kafka).",
            ["topic", "partition"], registry=r,
        )
        self.rebalances = Counter(
            "streamguard_rebalances_total", "Rebalance events, by kind (assigned, revoked, lost).", ["kind"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "streamguard_worker_restarts_total", "Worker processes restarted by the supervisor.", registry=r,
        )

    def message_resolved(self, topic: str, outcome: str) -> None:
        """Count one message; an unknown outcome is a bug, refused so the label set stays bounded."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {sorted(OUTCOMES)}")
        self.messages.labels(topic=topic, outcome=outcome).inc()

    def breaker_changed(self, name: str, old: object, new: object) -> None:
        """A ``CircuitBreaker`` listener: ``registry.add_listener(metrics.breaker_changed)``."""
        state = str(new)
        self.breaker_state.labels(breaker=name).set(BREAKER_STATE_VALUES[state])
        self.breaker_transitions.labels(breaker=name, to=state).inc()

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's gauges so a worker does not keep reporting partitions it lost."""
        for gauge in (self.inflight_messages, self.consumer_lag):
            try:
                gauge.remove(topic, str(partition))
            except KeyError:
                pass  # never set for this partition


def observe_many(child: Any, amounts: Sequence[float]) -> None:
    """``child.observe(a)`` for every ``a``, with one counter increment per bucket touched instead of two
    locked increments per value: the serial lanes observe a batch at once (prometheus-client keeps
    per-bucket, non-cumulative counts in ``_buckets`` and the total in ``_sum``; a unit test checks the
    exposition is the same as observing one by one)."""
    if not amounts:
        return
    ordered = sorted(amounts)  # then one bisect per bucket bound, not one per value
    buckets = child._buckets
    below = 0
    for i, bound in enumerate(child._upper_bounds):
        upto = bisect_right(ordered, bound)
        if upto > below:
            buckets[i].inc(upto - below)
            below = upto
    child._sum.inc(sum(amounts))
