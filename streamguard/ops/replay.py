"""The engines behind ``streamguard dlq ...`` and ``streamguard quarantine ...``: inspect, replay, purge.

Replay (and quarantine release) is resumable and idempotent per record. It reads the failure topic with its
own consumer group (``streamguard-replay.<topic>.<target or origin>``; ``streamguard-release...`` for
release) and never uses the group's subscription, only its committed position:

* the committed offset of a partition is the lowest record **not replayed yet** by this group (records
  skipped by a filter hold it back, so a later replay with another filter still finds them);
* the commit metadata lists the records above that offset that **were** replayed (the ``sg1`` run encoding
  of :mod:`streamguard.core.offsets`), so a second identical replay skips them and delivers nothing;
* both move only after the replayed copies are acknowledged by the broker (``acks=all``), so a crashed
  replay resumes from its last commit: at most the records acknowledged since then are delivered twice.

When the replayed offsets above the position are too scattered to fit the metadata budget, the position
is moved forward past the oldest runs and the records it passes over (skipped by the filter) are reported:
this group will not offer them again (use another ``--group``). Nothing is ever replayed twice by it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from streamguard.core.envelope import replay_headers
from streamguard.core.offsets import DEFAULT_METADATA_BYTES, OffsetTracker, decode_metadata, encode_metadata
from streamguard.errors import ConfigError, KafkaOperationError, StreamguardError
from streamguard.ops.kafkaio import Cluster, FailureRecord
from streamguard.ops.selection import Selection

DLQ_SUFFIX = ".dlq"
QUARANTINE_SUFFIX = ".quarantine"
MAX_IN_FLIGHT = 1000
"""Replayed records sent but not yet acknowledged, at most."""
COMMIT_EVERY_RECORDS = 10
COMMIT_EVERY_SECONDS = 1.0
"""The position is committed after this many newly acknowledged records or seconds, whichever comes first."""


def replay_group(source: str, to: str | None, *, release: bool = False) -> str:
    return f"streamguard-{'release' if release else 'replay'}.{source}.{to or 'origin'}"


def parse_rate(text: str | None) -> float | None:
    """``N``, ``N/s`` or ``N/m`` -> records per second (None: unlimited)."""
    if text is None:
        return None
    raw = text.strip().lower()
    per = 1.0
    if raw.endswith(("/s", "/sec")):
        raw = raw.rsplit("/", 1)[0]
    elif raw.endswith(("/m", "/min")):
        raw, per = raw.rsplit("/", 1)[0], 60.0
    try:
        rate = float(raw) / per
    except ValueError as exc:
        raise ConfigError(f"--rate {text!r}: expected N/s (e.g. 50/s) or N/m") from exc
    if rate <= 0:
        raise ConfigError(f"--rate {text!r} must be > 0")
    return rate


# -- inspect -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TopicSummary:
    topic: str
    partitions: int
    messages: int
    """high - low watermark, summed over partitions."""
    read: int = 0
    by_error_type: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partitions": self.partitions, "messages": self.messages, "read": self.read,
                "by_error_type": dict(self.by_error_type.most_common()),
                "by_source_partition": dict(sorted(self.by_source.items())),
                "by_reason": dict(self.by_reason.most_common()),
                "oldest_ms": self.oldest_ms, "newest_ms": self.newest_ms}


def summarize(cluster: Cluster, topic: str) -> TopicSummary:
    """Count a failure topic's records (watermarks) and break them down by reading it fully."""
    consumer = cluster.consumer()
    try:
        marks = cluster.watermarks(consumer, topic)
        summary = TopicSummary(topic, len(marks), sum(h - lo for lo, h in marks.values()))
        for rec in cluster.read(consumer, topic, marks, with_values=False):
            env = rec.envelope
            summary.read += 1
            summary.by_error_type[env.error_type or "(none)"] += 1
            source = f"{env.source_topic}/{env.source_partition}" if env.source_topic else "(unknown)"
            summary.by_source[source] += 1
            summary.by_reason[env.reason or "(none)"] += 1
            if rec.timestamp_ms is not None:
                summary.oldest_ms = min(summary.oldest_ms or rec.timestamp_ms, rec.timestamp_ms)
                summary.newest_ms = max(summary.newest_ms or rec.timestamp_ms, rec.timestamp_ms)
        return summary
    finally:
        consumer.close()


def read_partitionwise(cluster: Cluster, consumer: Any, topic: str, ranges: dict[int, tuple[int, int]],
                       with_values: bool) -> Iterator[FailureRecord]:
    """Partition 0 first, each in offset order: deterministic, so ``--limit`` picks the same records."""
    for p in sorted(ranges):
        yield from cluster.read(consumer, topic, {p: ranges[p]}, with_values=with_values)


def select(cluster: Cluster, topic: str, selection: Selection, *, with_values: bool) -> Iterator[FailureRecord]:
    """The records of ``topic`` the selection matches (``limit`` applied), partition by partition."""
    consumer = cluster.consumer()
    try:
        marks = cluster.watermarks(consumer, topic)
        n = 0
        for rec in read_partitionwise(cluster, consumer, topic, marks, with_values):
            if selection.limit is not None and n >= selection.limit:
                return
            if selection.matches(rec):
                n += 1
                yield rec
    finally:
        consumer.close()


# -- replay --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Planned:
    record: FailureRecord
    """The record without its value (read again when it is replayed)."""
    target: str
    partition: int | None
    """Target partition: the source partition when replaying to the source topic; None lets the key choose."""


@dataclass(slots=True)
class Plan:
    source: str
    group: str
    ranges: dict[int, tuple[int, int]]
    """partition -> [start, end): from the group's position (or the low watermark) to the high watermark."""
    done_above: dict[int, set[int]]
    """partition -> offsets above the position already replayed by this group."""
    selected: list[Planned] = field(default_factory=list)
    skipped_filter: int = 0
    already: int = 0
    no_target: int = 0
    beyond_limit: int = 0
    targets: Counter[str] = field(default_factory=Counter)
    missing_targets: list[str] = field(default_factory=list)
    partitions: int = 0


@dataclass(slots=True)
class Result:
    moved: int = 0
    by_target: Counter[str] = field(default_factory=Counter)
    passed_over: int = 0
    interrupted: bool = False
    error: str | None = None
    elapsed: float = 0.0
    rate: float = 0.0
    """Records per second from the first write to the last acknowledgement."""
    committed: dict[int, tuple[int, int]] = field(default_factory=dict)
    """partition -> (committed offset, records replayed above it) of the last commit."""


def _start_positions(cluster: Cluster, consumer: Any, topic: str, partitions: int,
                     marks: dict[int, tuple[int, int]]) -> tuple[dict[int, tuple[int, int]], dict[int, set[int]]]:
    committed = cluster.committed(consumer, topic, partitions)
    ranges: dict[int, tuple[int, int]] = {}
    done: dict[int, set[int]] = {}
    for p, (low, high) in marks.items():
        if p in committed:
            pos, meta = committed[p]
            above = decode_metadata(meta, pos)
            start = max(pos, low)
            done[p] = {o for o in above if o >= start}
        else:
            start, done[p] = low, set()
        ranges[p] = (start, max(start, high))
    return ranges, done


def plan_replay(cluster: Cluster, source: str, selection: Selection, *, to: str | None, group: str) -> Plan:
    """Scan ``source`` from the group's position and decide what a replay would move where (moves nothing)."""
    consumer = cluster.consumer(group)
    try:
        marks = cluster.watermarks(consumer, source)
        ranges, done = _start_positions(cluster, consumer, source, len(marks), marks)
        plan = Plan(source, group, ranges, done, partitions=len(marks))
        # below the group's position everything was replayed already (or passed over, see fit_position)
        plan.already = sum(ranges[p][0] - low for p, (low, _) in marks.items())
        chosen: list[tuple[FailureRecord, str]] = []
        for rec in read_partitionwise(cluster, consumer, source, ranges, with_values=False):
            if rec.offset in done[rec.partition]:
                plan.already += 1
            elif not selection.matches(rec):
                plan.skipped_filter += 1
            elif selection.limit is not None and len(chosen) >= selection.limit:
                plan.beyond_limit += 1
            elif (target := to or rec.envelope.source_topic) is None:
                plan.no_target += 1
            else:
                chosen.append((rec, target))
    finally:
        consumer.close()
    counts: dict[str, int | None] = {}
    for rec, target in chosen:
        if target not in counts:
            counts[target] = cluster.partitions(target, refresh=True)
            if counts[target] is None:
                plan.missing_targets.append(target)
        n = counts[target]
        env = rec.envelope
        same = target == env.source_topic and env.source_partition is not None
        part = env.source_partition if same and n is not None and 0 <= (env.source_partition or 0) < n else None
        plan.selected.append(Planned(rec, target, part))
        plan.targets[target] += 1
    return plan


def fit_position(position: int, replayed_above: Iterable[int],
                 max_bytes: int = DEFAULT_METADATA_BYTES) -> tuple[int, str, int]:
    """``(offset, metadata, passed_over)`` to commit: ``position`` with every replayed offset above it when they
    fit ``max_bytes``; otherwise the offset moves past the oldest runs of replayed offsets until the rest fit,
    and ``passed_over`` counts the not-replayed offsets it jumped (this group will not offer them again)."""
    above = sorted(o for o in set(replayed_above) if o >= position)
    runs: list[tuple[int, int]] = []
    for o in above:
        if runs and runs[-1][1] == o:
            runs[-1] = (runs[-1][0], o + 1)
        else:
            runs.append((o, o + 1))
    # a run starting right at the position is not "above" it: fold it into the position
    if runs and runs[0][0] == position:
        position = runs.pop(0)[1]

    def attempt(k: int) -> tuple[int, str, bool]:
        pos = runs[k - 1][1] if k else position
        rest = [o for a, b in runs[k:] for o in range(a, b)]
        meta = encode_metadata(pos, rest, max_bytes)
        return pos, meta, decode_metadata(meta, pos) == set(rest)

    pos, meta, ok = attempt(0)
    if ok:
        return pos, meta, 0
    lo, hi = 1, len(runs)  # dropping every run always fits (empty set)
    while lo < hi:
        mid = (lo + hi) // 2
        if attempt(mid)[2]:
            hi = mid
        else:
            lo = mid + 1
    pos, meta, _ = attempt(lo)
    jumped = sum(b - a for a, b in runs[:lo])
    return pos, meta, (pos - position) - jumped


ProgressFn = Callable[[int, int, int, float], None]
"""progress(moved, to_move, skipped, rate_per_second)."""


def execute(cluster: Cluster, plan: Plan, *, rate: float | None, create_target: bool,
            stop: threading.Event | None = None, progress: ProgressFn | None = None,
            metadata_bytes: int = DEFAULT_METADATA_BYTES) -> Result:
    """Replay the planned records; commit the group's position as their copies are acknowledged."""
    from streamguard.kafka.producer import ReliableProducer

    if plan.missing_targets:
        if not create_target:
            names = ", ".join(repr(t) for t in plan.missing_targets)
            raise StreamguardError(f"target topic {names} does not exist on {cluster.bootstrap}; create it or pass "
                                   "--create-target (nothing was replayed)")
        for t in plan.missing_targets:
            cluster.create_topic(t, plan.partitions)
    stop = stop or threading.Event()
    result = Result()
    wanted = {(pl.record.partition, pl.record.offset): pl for pl in plan.selected}
    skipped = plan.skipped_filter + plan.no_target + plan.beyond_limit
    total = len(wanted)
    if not wanted:
        return result
    trackers = {p: OffsetTracker(start, plan.done_above.get(p, ())) for p, (start, _) in plan.ranges.items()}
    last_commit: dict[int, tuple[int, str]] = {}
    in_flight: deque[tuple[int, int, str, Future[tuple[int, int]]]] = deque()
    failures: list[str] = []
    consumer = cluster.consumer(plan.group)
    producer = ReliableProducer(cluster.config)
    started = time.monotonic()
    sent = 0
    acked_since_commit = 0
    last_commit_at = started
    first_send: float | None = None

    def current_rate() -> float:
        span = time.monotonic() - first_send if first_send is not None else 0.0
        return result.moved / span if span > 0 else 0.0

    def report() -> None:
        if progress is not None:
            progress(result.moved, total, skipped, current_rate())

    def settle(block: bool) -> int:
        """Move acknowledged heads of the in-flight queue into the trackers; returns how many."""
        n = 0
        while in_flight and (block or in_flight[0][3].done()):
            p, off, target, fut = in_flight[0]
            try:
                fut.result(timeout=None if block else 0)
            except Exception as exc:  # a replayed copy was not written: it stays unreplayed (not committed)
                failures.append(f"{plan.source}/{p}/{off} -> {target}: {exc}")
            else:
                trackers[p].mark_done(off)
                result.moved += 1
                result.by_target[target] += 1
                n += 1
            in_flight.popleft()
        return n

    def commit() -> None:
        positions: dict[int, tuple[int, str]] = {}
        for p, tracker in trackers.items():
            wm = tracker.committable()
            if wm is None:
                continue
            pos, meta, passed = fit_position(wm, tracker.resolved_above(), metadata_bytes)
            if last_commit.get(p) != (pos, meta):
                positions[p] = (pos, meta)
                result.passed_over += passed
        cluster.commit(consumer, plan.source, positions)
        last_commit.update(positions)
        result.committed.update({p: (pos, len(decode_metadata(meta, pos))) for p, (pos, meta) in positions.items()})

    try:
        for rec in read_partitionwise(cluster, consumer, plan.source, plan.ranges, with_values=True):
            if stop.is_set() or failures:
                break
            tracker = trackers[rec.partition]
            if tracker.track(rec.offset):
                continue  # replayed by an earlier run of this group
            planned = wanted.get((rec.partition, rec.offset))
            if planned is None:
                continue  # not selected: stays unreplayed and holds the position
            first_send = first_send if first_send is not None else time.monotonic()
            if rate is not None:
                due = first_send + sent / rate
                while (now := time.monotonic()) < due and not stop.is_set():
                    acked_since_commit += settle(False)
                    time.sleep(min(0.05, due - now))
                if stop.is_set():
                    break
            headers = replay_headers(rec.headers, topic=rec.topic, partition=rec.partition, offset=rec.offset)
            fut = producer.send(planned.target, rec.value, rec.key, headers, partition=planned.partition)
            in_flight.append((rec.partition, rec.offset, planned.target, fut))
            sent += 1
            while len(in_flight) >= MAX_IN_FLIGHT:
                in_flight[0][3].exception()  # wait for the oldest copy's ack (or failure)
                acked_since_commit += settle(False)
            acked_since_commit += settle(False)
            if acked_since_commit >= COMMIT_EVERY_RECORDS or time.monotonic() - last_commit_at >= COMMIT_EVERY_SECONDS:
                commit()
                acked_since_commit, last_commit_at = 0, time.monotonic()
            report()
            if sent >= total:
                break
        producer.flush()
        settle(True)
        commit()
        report()
    finally:
        producer.close(10)
        consumer.close()
    result.elapsed = time.monotonic() - started
    result.rate = current_rate()
    result.interrupted = stop.is_set() and result.moved < total
    if failures:
        result.error = f"{len(failures)} record(s) could not be written, first: {failures[0]}"
        raise KafkaOperationError(f"replay stopped: {result.error}; {result.moved} record(s) were replayed and "
                                  "committed; run the same command again to resume")
    return result


# -- purge ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PurgePlan:
    topic: str
    before: dict[int, int]
    """partition -> delete every record below this offset."""
    counts: dict[int, int]
    lows: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def plan_purge(cluster: Cluster, topic: str, selection: Selection) -> PurgePlan:
    """Kafka deletes records only below an offset: the selection must be a prefix of each partition it touches."""
    consumer = cluster.consumer()
    try:
        marks = cluster.watermarks(consumer, topic)
        selected: dict[int, list[int]] = {}
        unselected: dict[int, list[int]] = {}
        n = 0
        for rec in read_partitionwise(cluster, consumer, topic, marks, with_values=False):
            hit = selection.matches(rec) and (selection.limit is None or n < selection.limit)
            n += hit
            (selected if hit else unselected).setdefault(rec.partition, []).append(rec.offset)
    finally:
        consumer.close()
    before: dict[int, int] = {}
    counts: dict[int, int] = {}
    for p, offs in sorted(selected.items()):
        last = offs[-1]
        holes = [o for o in unselected.get(p, []) if o < last]
        if holes:
            raise ConfigError(
                f"cannot purge this selection: Kafka can only delete the records of a partition below an offset, "
                f"and in {topic}[{p}] offset {last} is selected but offset {holes[0]} (older) is not "
                f"({len(holes)} unselected record(s) below it). Narrow the selection to a prefix, or purge "
                f"everything up to offset {last} with --offsets {p}:{marks[p][0]}-{last} (that also deletes the "
                f"{len(holes)} unselected record(s); replay/release the ones you need first).")
        later = [o for o in unselected.get(p, []) if o > last]
        before[p] = last + 1 if later else marks[p][1]
        counts[p] = len(offs)
    return PurgePlan(topic, before, counts, {p: lo for p, (lo, _) in marks.items()})


def purge(cluster: Cluster, plan: PurgePlan) -> dict[int, int]:
    """Delete the planned prefixes; returns the new low watermark per partition."""
    if not plan.before:
        return {}
    return cluster.delete_records(plan.topic, plan.before)
