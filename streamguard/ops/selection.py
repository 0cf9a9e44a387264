"""Which DLQ / quarantine records an ops command acts on: the filters shared by show, replay, release, purge.

All filters combine with AND; a repeated ``--partition``, ``--offsets`` or ``--error-type`` combines with OR
within that filter, a repeated ``--header`` with AND. Pure logic: no Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from streamguard.errors import ConfigError
from streamguard.ops.kafkaio import FailureRecord


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 date/datetime (UTC unless it carries an offset)."""
    raw = text.strip()
    if raw.isdigit():
        return int(raw)
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError as exc:
        raise ConfigError(f"not a time: {text!r} (use epoch milliseconds or ISO 8601, e.g. 2024-05-01T12:00:00Z)"
                          ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """DLQ offsets ``first..last`` (inclusive), optionally of one DLQ partition only."""

    first: int
    last: int
    partition: int | None = None

    def contains(self, partition: int, offset: int) -> bool:
        return (self.partition is None or self.partition == partition) and self.first <= offset <= self.last


def parse_offsets(text: str) -> OffsetRange:
    """``A-B``, ``A`` or ``A-`` (to the end), optionally prefixed with a DLQ partition: ``P:A-B``."""
    part: int | None = None
    body = text.strip()
    try:
        if ":" in body:
            p, body = body.split(":", 1)
            part = int(p)
        if "-" in body:
            a, b = body.split("-", 1)
            first, last = int(a), (int(b) if b.strip() else 2**63 - 1)
        else:
            first = last = int(body)
    except ValueError as exc:
        raise ConfigError(f"--offsets {text!r}: expected A-B, A, A- or PARTITION:A-B") from exc
    if first < 0 or last < first:
        raise ConfigError(f"--offsets {text!r}: the range is empty")
    return OffsetRange(first, last, part)


def parse_header(text: str) -> tuple[str, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--header {text!r}: expected NAME=VALUE")
    return name, value.encode("utf-8")


@dataclass(slots=True)
class Selection:
    """The filters of one command; ``matches`` decides a record (``limit`` is applied by the caller)."""

    error_types: Sequence[str] = ()
    keys: Sequence[str] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    source_partitions: Sequence[int] = ()
    offsets: Sequence[OffsetRange] = ()
    headers: Sequence[tuple[str, bytes]] = ()
    limit: int | None = None
    described: list[str] = field(default_factory=list)

    def matches(self, rec: FailureRecord) -> bool:
        if self.error_types and not any(_type_matches(want, rec.envelope.error_type) for want in self.error_types):
            return False
        if self.keys and (rec.key is None or rec.key.decode("utf-8", "replace") not in self.keys):
            return False
        if self.since_ms is not None and (rec.timestamp_ms is None or rec.timestamp_ms < self.since_ms):
            return False
        if self.until_ms is not None and (rec.timestamp_ms is None or rec.timestamp_ms >= self.until_ms):
            return False
        if self.source_partitions and rec.envelope.source_partition not in self.source_partitions:
            return False
        if self.offsets and not any(r.contains(rec.partition, rec.offset) for r in self.offsets):
            return False
        return all((name, value) in rec.headers for name, value in self.headers)

    @property
    def is_everything(self) -> bool:
        return not (self.error_types or self.keys or self.since_ms is not None or self.until_ms is not None
                    or self.source_partitions or self.offsets or self.headers or self.limit is not None)

    def describe(self) -> str:
        return ", ".join(self.described) if self.described else "all records"


def _type_matches(want: str, actual: str | None) -> bool:
    """``=Name`` is an exact match of the recorded type; otherwise a case-sensitive substring match."""
    if actual is None:
        return False
    if want.startswith("="):
        return actual == want[1:]
    return want in actual


def selection_from_args(args: object) -> Selection:
    """Build a Selection from the argparse namespace of a command that has the common filter flags."""
    described: list[str] = []
    error_types = list(getattr(args, "error_type", None) or [])
    keys = list(getattr(args, "key", None) or [])
    since = getattr(args, "since", None)
    until = getattr(args, "until", None)
    partitions = list(getattr(args, "partition", None) or [])
    offsets = [parse_offsets(t) for t in (getattr(args, "offsets", None) or [])]
    headers = [parse_header(t) for t in (getattr(args, "header", None) or [])]
    limit = getattr(args, "limit", None)
    since_ms = parse_time_ms(since) if since else None
    until_ms = parse_time_ms(until) if until else None
    if error_types:
        described.append("error type " + " or ".join(error_types))
    if keys:
        described.append("key " + " or ".join(keys))
    if since_ms is not None:
        described.append(f"since {_iso(since_ms)}")
    if until_ms is not None:
        described.append(f"until {_iso(until_ms)}")
    if partitions:
        described.append("source partition " + " or ".join(map(str, partitions)))
    if offsets:
        described.append("offsets " + " or ".join(getattr(args, "offsets", None) or []))
    if headers:
        described.append("header " + " and ".join(getattr(args, "header", None) or []))
    if limit is not None:
        if limit < 0:
            raise ConfigError("--limit must be >= 0")
        described.append(f"first {limit}")
    return Selection(error_types, keys, since_ms, until_ms, partitions, offsets, headers, limit, described)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso(ms: int | None) -> str:
    """ISO 8601 UTC text for a millisecond timestamp ('-' when absent)."""
    return "-" if ms is None else _iso(ms)
