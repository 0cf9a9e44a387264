"""The ops tools' only contact with confluent-kafka: read a topic range, group positions, delete records.

Clients are built by :mod:`streamguard.kafka.clients`; this module adds what the ops tools need on top
(``TopicPartition``, end-of-partition events, commit metadata) so the rest of ``streamguard.ops`` stays
free of librdkafka types.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamguard.core.envelope import Envelope, Header, parse_envelope
from streamguard.errors import KafkaOperationError, StreamguardError
from streamguard.kafka.clients import ensure_topics, make_admin, make_consumer, map_error, wait_for_cluster

_COORDINATOR_CODES = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                      KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._WAIT_COORD, KafkaError._TIMED_OUT,
                      KafkaError.REQUEST_TIMED_OUT}
COORDINATOR_RETRY_SECONDS = 30.0
"""How long group-coordinator calls (committed offsets, commits) retry retriable errors."""
READ_IDLE_TIMEOUT = 30.0
"""Seconds without any progress while reading a range before giving up (a broker that stopped answering)."""


@dataclass(slots=True)
class FailureRecord:
    """One record of a DLQ or quarantine topic with its decoded ``streamguard.*`` headers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    envelope: Envelope = field(default_factory=Envelope)

    @property
    def coordinates(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def _headers(raw: Any) -> list[Header]:
    out: list[Header] = []
    for name, value in raw or []:
        out.append((str(name), b"" if value is None else value.encode() if isinstance(value, str) else bytes(value)))
    return out


class Cluster:
    """Admin and reading helpers bound to one cluster (``config`` holds ``bootstrap.servers`` and security)."""

    def __init__(self, config: Mapping[str, Any], *, timeout: float = 10.0) -> None:
        self.config = dict(config)
        self.bootstrap = str(self.config.get("bootstrap.servers", ""))
        self.timeout = timeout
        self.admin = make_admin({**self.config, "log_level": 0})
        self._metadata: Any = None

    def metadata(self, refresh: bool = False) -> Any:
        if self._metadata is None or refresh:
            self._metadata = wait_for_cluster(self.admin, self.timeout, self.bootstrap)
        return self._metadata

    def topics(self, suffix: str) -> list[str]:
        return sorted(t for t in self.metadata().topics if t.endswith(suffix) and not t.startswith("__"))

    def partitions(self, topic: str, refresh: bool = False) -> int | None:
        """Partition count, or None when the topic does not exist."""
        tm = self.metadata(refresh).topics.get(topic)
        if tm is None or tm.error is not None or not tm.partitions:
            return None
        return len(tm.partitions)

    def require_topic(self, topic: str) -> int:
        n = self.partitions(topic, refresh=True)
        if n is None:
            raise StreamguardError(f"topic {topic!r} does not exist on {self.bootstrap}")
        return n

    def create_topic(self, topic: str, partitions: int) -> None:
        ensure_topics(self.admin, {topic: partitions}, timeout=max(self.timeout, 30.0))
        self.metadata(refresh=True)

    def consumer(self, group: str | None = None) -> Any:
        """A consumer that never commits by itself; with ``group`` its commits go to that group."""
        return make_consumer({**self.config, "group.id": group or f"streamguard-inspect-{uuid.uuid4().hex[:12]}",
                              "enable.auto.commit": False, "enable.auto.offset.store": False,
                              "enable.partition.eof": True, "auto.offset.reset": "earliest", "log_level": 0})

    def watermarks(self, consumer: Any, topic: str) -> dict[int, tuple[int, int]]:
        """``partition -> (low, high)`` of ``topic``."""
        n = self.require_topic(topic)
        out: dict[int, tuple[int, int]] = {}
        for p in range(n):
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout)
            except KafkaException as exc:
                raise map_error(exc, f"reading the watermarks of {topic}[{p}]") from exc
            out[p] = (int(low), int(high))
        return out

    def read(self, consumer: Any, topic: str, ranges: Mapping[int, tuple[int, int]],
             with_values: bool = True) -> Iterator[FailureRecord]:
        """Yield the records of ``topic`` in ``[start, end)`` per partition (partitions interleaved, each in
        offset order). Ends when every partition reached its end; never commits."""
        todo = {p: (s, e) for p, (s, e) in ranges.items() if e > s}
        if not todo:
            return
        consumer.assign([TopicPartition(topic, p, s) for p, (s, _) in sorted(todo.items())])
        last_progress = time.monotonic()
        try:
            while todo:
                msgs = consumer.consume(500, 0.5)
                if not msgs and time.monotonic() - last_progress > READ_IDLE_TIMEOUT:
                    raise KafkaOperationError(f"reading {topic}: no progress for {READ_IDLE_TIMEOUT:.0f}s on "
                                              f"partition(s) {sorted(todo)}")
                for m in msgs:
                    p = m.partition()
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            if p in todo and (m.offset() is None or m.offset() >= todo[p][1]):
                                del todo[p]
                            continue
                        raise map_error(err, f"reading {topic}[{p}]")
                    if p not in todo:
                        continue
                    last_progress = time.monotonic()
                    offset = m.offset()
                    end = todo[p][1]
                    if offset >= end:
                        del todo[p]
                        continue
                    ts_type, ts = m.timestamp()
                    headers = _headers(m.headers())
                    yield FailureRecord(topic, p, offset, ts if ts_type != 0 and ts >= 0 else None, m.key(),
                                        m.value() if with_values else None, headers, parse_envelope(headers))
                    if offset >= end - 1:
                        del todo[p]
        finally:
            consumer.unassign()

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """Run a group-coordinator call, retrying retriable errors (coordinator moving or loading) for a while."""
        deadline = time.monotonic() + max(self.timeout, COORDINATOR_RETRY_SECONDS)
        delay = 0.1
        while True:
            try:
                result = call()
                for tp in result if isinstance(result, list) else []:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
                return result
            except KafkaException as exc:
                kerr = exc.args[0] if exc.args else None
                retriable = isinstance(kerr, KafkaError) and (kerr.retriable() or kerr.code() in _COORDINATOR_CODES)
                if not retriable or time.monotonic() + delay > deadline:
                    raise map_error(exc, what) from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def committed(self, consumer: Any, topic: str, partitions: int) -> dict[int, tuple[int, str]]:
        """The consumer's group position per partition: ``partition -> (offset, metadata)``; absent if none."""
        tps = self._retrying(f"reading the committed offsets of {topic}", lambda: consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=self.timeout))
        return {tp.partition: (tp.offset, tp.metadata or "") for tp in tps if tp.offset >= 0}

    def commit(self, consumer: Any, topic: str, positions: Mapping[int, tuple[int, str]]) -> None:
        """Commit ``partition -> (offset, metadata)`` synchronously for the consumer's group."""
        if not positions:
            return
        tps = [TopicPartition(topic, p, off, meta) for p, (off, meta) in sorted(positions.items())]
        self._retrying(f"committing the replay position of {topic}",
                       lambda: consumer.commit(offsets=tps, asynchronous=False))

    def delete_records(self, topic: str, before: Mapping[int, int]) -> dict[int, int]:
        """Delete the records below ``before[partition]``; returns the new low watermark per partition."""
        tps = [TopicPartition(topic, p, off) for p, off in sorted(before.items())]
        futures = self.admin.delete_records(tps, operation_timeout=max(self.timeout, 30.0))
        out: dict[int, int] = {}
        for tp, fut in futures.items():
            try:
                res = fut.result(timeout=max(self.timeout, 30.0))
            except KafkaException as exc:
                raise map_error(exc, f"deleting records of {topic}[{tp.partition}]") from exc
            out[tp.partition] = int(getattr(res, "low_watermark", tp.offset))
        return out
