"""The ``streamguard.*`` header schema of dead-letter, quarantine and retry-topic records.

A failed record is re-produced with its original key, value and headers untouched; everything streamguard
knows about the failure travels in extra headers (UTF-8 text values), so the DLQ keeps the exact bytes and
ops tools can inspect and replay without a schema registry. The headers are size-capped: a DLQ record must
never be rejected for size, so the stack and then the error message shrink to fit ``max_record_bytes``.

Which ``streamguard.*`` headers survive a second trip (DLQ -> replay -> failure -> DLQ):

* ``streamguard.idempotency-key`` is the message's identity; the first key assigned is kept for good, so
  a replayed message is still deduplicated against its first processing.
* ``streamguard.replayed-from`` is provenance written by the replay tool; a later failure keeps it so the
  DLQ record says where the replayed copy came from. ``strip_envelope`` drops it: the next replay sets
  a fresh one pointing at the DLQ record it reads.
* every other ``streamguard.*`` header describes *one* failure and is replaced by the new failure's.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from streamguard import errors

__all__ = [
    "FAILURE_HEADERS",
    "HEADER_PREFIX",
    "H_ATTEMPTS",
    "H_ERROR_MESSAGE",
    "H_ERROR_STACK",
    "H_ERROR_TYPE",
    "H_FIRST_FAILURE",
    "H_HANDLER",
    "H_IDEMPOTENCY_KEY",
    "H_LAST_FAILURE",
    "H_NOT_BEFORE",
    "H_REASON",
    "H_REPLAYED_FROM",
    "H_RETRY_ATTEMPT",
    "H_SOURCE_OFFSET",
    "H_SOURCE_PARTITION",
    "H_SOURCE_TIMESTAMP",
    "H_SOURCE_TOPIC",
    "H_WORKER",
    "REASONS",
    "REASON_DEAD_LETTER",
    "REASON_QUARANTINE",
    "REASON_RETRY",
    "RECORD_OVERHEAD_BYTES",
    "Envelope",
    "FailureInfo",
    "Header",
    "HeaderValue",
    "HeadersIn",
    "dead_letter_headers",
    "describe_error",
    "parse_envelope",
    "real_cause",
    "record_size",
    "replay_headers",
    "retry_headers",
    "strip_envelope",
]

HEADER_PREFIX = "streamguard."
H_SOURCE_TOPIC = "streamguard.source.topic"
H_SOURCE_PARTITION = "streamguard.source.partition"
H_SOURCE_OFFSET = "streamguard.source.offset"
H_SOURCE_TIMESTAMP = "streamguard.source.timestamp"
H_ERROR_TYPE = "streamguard.error.type"
H_ERROR_MESSAGE = "streamguard.error.message"
H_ERROR_STACK = "streamguard.error.stack"
H_ATTEMPTS = "streamguard.attempts"
H_FIRST_FAILURE = "streamguard.first-failure"
H_LAST_FAILURE = "streamguard.last-failure"
H_HANDLER = "streamguard.handler"
H_WORKER = "streamguard.worker"
H_REASON = "streamguard.reason"
H_IDEMPOTENCY_KEY = "streamguard.idempotency-key"
H_REPLAYED_FROM = "streamguard.replayed-from"
H_NOT_BEFORE = "streamguard.not-before"
H_RETRY_ATTEMPT = "streamguard.retry.attempt"

REASON_DEAD_LETTER = "dead-letter"
REASON_QUARANTINE = "quarantine"
REASON_RETRY = "retry"
REASONS = frozenset({REASON_DEAD_LETTER, REASON_QUARANTINE, REASON_RETRY})

FAILURE_HEADERS = frozenset({
    H_SOURCE_TOPIC, H_SOURCE_PARTITION, H_SOURCE_OFFSET, H_SOURCE_TIMESTAMP, H_ERROR_TYPE, H_ERROR_MESSAGE,
    H_ERROR_STACK, H_ATTEMPTS, H_FIRST_FAILURE, H_LAST_FAILURE, H_HANDLER, H_WORKER, H_REASON, H_NOT_BEFORE,
    H_RETRY_ATTEMPT,
})
"""Headers that describe one failure; a new failure replaces them (any other ``streamguard.*`` too)."""

RECORD_OVERHEAD_BYTES = 512
"""Allowance for Kafka's record/batch framing on top of key, value and header bytes."""
HEADER_OVERHEAD_BYTES = 10
"""Allowance per header for its varint length prefixes."""
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024
DEFAULT_MAX_STACK_BYTES = 16 * 1024
_TRUNCATED = "...[truncated]"

Header = tuple[str, bytes]
"""A header as streamguard produces it."""
HeaderValue = str | bytes | None
HeadersIn = Sequence[tuple[str, HeaderValue]] | Mapping[str, HeaderValue] | None
"""Headers as Kafka clients hand them over (confluent-kafka's shapes). A ``str`` value is taken as UTF-8 and a
null value becomes ``b""``: the producer takes bytes, and no streamguard header is ever null."""


@dataclass(slots=True)
class FailureInfo:
    """What the runtime knows about a failure, turned into headers by ``dead_letter_headers``."""

    error_type: str
    error_message: str
    stack: str
    attempts: int
    first_failure_ms: int
    last_failure_ms: int
    handler: str
    worker_id: str
    reason: str
    idempotency_key: str | None = None


@dataclass(slots=True)
class Envelope:
    """A parsed view of a record's ``streamguard.*`` headers; None where a header is absent or malformed."""

    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_timestamp_ms: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    stack: str | None = None
    attempts: int | None = None
    first_failure_ms: int | None = None
    last_failure_ms: int | None = None
    handler: str | None = None
    worker_id: str | None = None
    reason: str | None = None
    idempotency_key: str | None = None
    replayed_from: str | None = None
    not_before_ms: int | None = None
    retry_attempt: int | None = None


# -- describing errors ---------------------------------------------------------------------------------------

# Exact types only: a user's subclass (``class InvalidOrder(PermanentFailure)``) is a real cause, and so are
# errors with a meaning of their own such as HandlerTimeout.
_WRAPPERS: frozenset[type[BaseException]] = frozenset({
    BaseException, Exception, RuntimeError,
    errors.StreamguardError, errors.KafkaOperationError, errors.DecodeError,
    errors.HandlerSignal, errors.PermanentFailure, errors.Quarantine, errors.RetryLater,
})


def _is_wrapper(exc: BaseException) -> bool:
    """A wrapper says nothing of its own when it was raised ``from`` a cause."""
    return exc.__cause__ is not None and type(exc) in _WRAPPERS


def real_cause(exc: BaseException) -> BaseException:
    """Follow wrappers down to the exception that actually went wrong (see ``describe_error``)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif _is_wrapper(exc):
            assert exc.__cause__ is not None
            exc = exc.__cause__
        elif type(exc).__name__ == "RetryError" and type(exc).__module__.startswith("tenacity"):
            inner = getattr(getattr(exc, "last_attempt", None), "exception", lambda: None)()
            if not isinstance(inner, BaseException):
                break
            exc = inner
        else:
            break
    return exc


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def describe_error(exc: BaseException, *, max_stack_lines: int = 20) -> tuple[str, str, str]:
    """Return ``(type, message, stack)`` of the real cause of ``exc``, for DLQ headers and logs.

    The real cause: the first leaf of an ExceptionGroup, the ``__cause__`` of a generic or streamguard
    wrapper (``raise RuntimeError("failed") from e``, ``raise PermanentFailure(...) from e``) and the last
    attempt's error of a tenacity ``RetryError``. The stack keeps its last ``max_stack_lines`` lines (the
    innermost frames and the error line) and never includes local variable values.
    """
    cause = real_cause(exc)
    message = str(cause)
    if not message and cause is not exc:
        message = str(exc)
    tb = traceback.TracebackException.from_exception(cause, capture_locals=False)
    lines = "".join(tb.format()).splitlines()
    if max_stack_lines >= 0 and len(lines) > max_stack_lines:
        omitted = len(lines) - max_stack_lines
        lines = [f"... {omitted} lines omitted ...", *lines[len(lines) - max_stack_lines:]] if max_stack_lines else []
    return _type_name(cause), message, "\n".join(lines)


# -- building headers ----------------------------------------------------------------------------------------


def record_size(key_len: int, value_len: int, headers: Sequence[Header]) -> int:
    """Estimate a record's size as the broker counts it against ``max.message.bytes`` (an upper bound)."""
    size = key_len + value_len + RECORD_OVERHEAD_BYTES
    for name, value in headers:
        size += len(name.encode()) + len(value) + HEADER_OVERHEAD_BYTES
    return size


def _text(value: object) -> bytes:
    return str(value).encode("utf-8")


def _cut_head(text: str, max_bytes: int) -> str:
    """Keep the start of ``text`` within ``max_bytes`` UTF-8 bytes (messages: the start says most)."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    marker = _TRUNCATED.encode()
    if max_bytes <= len(marker):
        return ""
    return raw[: max_bytes - len(marker)].decode("utf-8", errors="ignore") + _TRUNCATED


def _cut_tail(text: str, max_bytes: int) -> str:
    """Keep the end of ``text`` within ``max_bytes`` (stacks: the innermost frames and the error line)."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    marker = (_TRUNCATED + "\n").encode()
    if max_bytes <= len(marker):
        return ""
    return _TRUNCATED + "\n" + raw[len(raw) - (max_bytes - len(marker)):].decode("utf-8", errors="ignore")


def _items(headers: HeadersIn) -> list[tuple[str, HeaderValue]]:
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


def _as_bytes(value: HeaderValue) -> bytes:
    if value is None:
        return b""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _kept_originals(original: HeadersIn) -> list[Header]:
    """The original headers, in order, minus the previous failure's ``streamguard.*`` headers."""
    kept: list[Header] = []
    have_key = False
    for name, raw in _items(original):
        value = _as_bytes(raw)
        if name == H_IDEMPOTENCY_KEY:
            if have_key:
                continue  # one identity only: the first key wins
            have_key = True
        elif name.startswith(HEADER_PREFIX) and name != H_REPLAYED_FROM:
            continue
        kept.append((name, value))
    return kept


def _fit(
    fixed: list[Header],
    message: str,
    stack: str,
    *,
    key_len: int,
    value_len: int,
    max_record_bytes: int,
    max_message_bytes: int,
    max_stack_bytes: int,
) -> tuple[str, str]:
    """Shrink the stack, then the message, until the record fits; the original bytes are never touched."""
    message = _cut_head(message, max_message_bytes)
    stack = _cut_tail(stack, max_stack_bytes)
    base = record_size(key_len, value_len, fixed) + 2 * HEADER_OVERHEAD_BYTES
    base += len(H_ERROR_MESSAGE) + len(H_ERROR_STACK)
    room = max_record_bytes - base
    msg_len = len(message.encode())
    stack_len = len(stack.encode())
    if msg_len + stack_len <= room:
        return message, stack
    stack = _cut_tail(stack, max(0, room - msg_len))
    if msg_len + len(stack.encode()) <= room:
        return message, stack
    # Still too big with no stack at all: the message goes next. Below zero room the original record alone
    # is over the cap; we still return the minimal headers and the caller deals with the topic config.
    return _cut_head(message, max(0, room)), ""


def _failure_headers(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    info: FailureInfo | None,
    reason: str,
) -> list[Header]:
    headers: list[Header] = [
        (H_SOURCE_TOPIC, _text(source_topic)),
        (H_SOURCE_PARTITION, _text(int(partition))),
        (H_SOURCE_OFFSET, _text(int(offset))),
    ]
    if timestamp_ms is not None:
        headers.append((H_SOURCE_TIMESTAMP, _text(int(timestamp_ms))))
    headers.append((H_REASON, _text(reason)))
    if info is not None:
        headers += [
            (H_ERROR_TYPE, _text(info.error_type)),
            (H_ATTEMPTS, _text(int(info.attempts))),
            (H_FIRST_FAILURE, _text(int(info.first_failure_ms))),
            (H_LAST_FAILURE, _text(int(info.last_failure_ms))),
            (H_HANDLER, _text(info.handler)),
            (H_WORKER, _text(info.worker_id)),
        ]
    return headers


def _assemble(
    original: HeadersIn,
    extra: list[Header],
    info: FailureInfo | None,
    *,
    key_len: int,
    value_len: int,
    max_record_bytes: int,
    max_message_bytes: int,
    max_stack_bytes: int,
) -> list[Header]:
    headers = _kept_originals(original)
    if info is not None and info.idempotency_key is not None and all(n != H_IDEMPOTENCY_KEY for n, _ in headers):
        extra = [*extra, (H_IDEMPOTENCY_KEY, _text(info.idempotency_key))]
    headers += extra
    if info is None:
        return headers
    message, stack = _fit(
        headers, info.error_message, info.stack, key_len=key_len, value_len=value_len,
        max_record_bytes=max_record_bytes, max_message_bytes=max_message_bytes, max_stack_bytes=max_stack_bytes,
    )
    headers.append((H_ERROR_MESSAGE, _text(message)))
    headers.append((H_ERROR_STACK, _text(stack)))
    return headers


def dead_letter_headers(
    original: HeadersIn,
    *,
    source_topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    info: FailureInfo,
    key_len: int,
    value_len: int,
    max_record_bytes: int = 1_000_000,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_stack_bytes: int = DEFAULT_MAX_STACK_BYTES,
) -> list[Header]:
    """Headers for a DLQ or quarantine record: the original headers first, then the failure's.

    ``info.reason`` is ``"dead-letter"`` or ``"quarantine"``. ``source_*`` name the record as consumed; for a
    record read from a retry topic pass the original coordinates from ``parse_envelope``. The result fits
    ``max_record_bytes`` together with the key and value whenever the original record alone does.
    """
    if info.reason not in (REASON_DEAD_LETTER, REASON_QUARANTINE):
        raise ValueError(f"info.reason must be {REASON_DEAD_LETTER!r} or {REASON_QUARANTINE!r}, got {info.reason!r}")
    extra = _failure_headers(source_topic=source_topic, partition=partition, offset=offset,
                             timestamp_ms=timestamp_ms, info=info, reason=info.reason)
    return _assemble(original, extra, info, key_len=key_len, value_len=value_len, max_record_bytes=max_record_bytes,
                     max_message_bytes=max_message_bytes, max_stack_bytes=max_stack_bytes)


def retry_headers(
    original: HeadersIn,
    *,
    source_topic: str,
    partition: int,
    offset: int,
    not_before_ms: int,
    attempt: int,
    timestamp_ms: int | None = None,
    info: FailureInfo | None = None,
    key_len: int = 0,
    value_len: int = 0,
    max_record_bytes: int = 1_000_000,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_stack_bytes: int = DEFAULT_MAX_STACK_BYTES,
) -> list[Header]:
    """Headers for a record sent to a retry topic: run it again at ``not_before_ms``, retry number ``attempt``.

    ``source_*`` should stay the *original* topic's coordinates on every hop (take them from
    ``parse_envelope`` when re-routing from a retry topic), so the handler and the DLQ see where the message
    came from. ``info`` (optional) carries the last error, attempts and first-failure time forward.
    """
    extra = _failure_headers(source_topic=source_topic, partition=partition, offset=offset,
                             timestamp_ms=timestamp_ms, info=info, reason=REASON_RETRY)
    extra += [(H_NOT_BEFORE, _text(int(not_before_ms))), (H_RETRY_ATTEMPT, _text(int(attempt)))]
    return _assemble(original, extra, info, key_len=key_len, value_len=value_len, max_record_bytes=max_record_bytes,
                     max_message_bytes=max_message_bytes, max_stack_bytes=max_stack_bytes)


# -- reading headers -----------------------------------------------------------------------------------------

_STR_FIELDS = {
    H_SOURCE_TOPIC: "source_topic", H_ERROR_TYPE: "error_type", H_ERROR_MESSAGE: "error_message",
    H_ERROR_STACK: "stack", H_HANDLER: "handler", H_WORKER: "worker_id", H_REASON: "reason",
    H_IDEMPOTENCY_KEY: "idempotency_key", H_REPLAYED_FROM: "replayed_from",
}
_INT_FIELDS = {
    H_SOURCE_PARTITION: "source_partition", H_SOURCE_OFFSET: "source_offset",
    H_SOURCE_TIMESTAMP: "source_timestamp_ms", H_ATTEMPTS: "attempts", H_FIRST_FAILURE: "first_failure_ms",
    H_LAST_FAILURE: "last_failure_ms", H_NOT_BEFORE: "not_before_ms", H_RETRY_ATTEMPT: "retry_attempt",
}


def parse_envelope(headers: HeadersIn) -> Envelope:
    """Read the ``streamguard.*`` headers; malformed or null values read as absent instead of raising,
    because ops tools must still be able to inspect and replay a damaged record."""
    env = Envelope()
    seen: set[str] = set()
    for name, raw in _items(headers):
        if raw is None or name in seen:
            continue  # the first occurrence wins, as in _kept_originals
        value = _as_bytes(raw)
        if name in _STR_FIELDS:
            seen.add(name)
            setattr(env, _STR_FIELDS[name], value.decode("utf-8", errors="replace"))
        elif name in _INT_FIELDS:
            seen.add(name)
            try:
                setattr(env, _INT_FIELDS[name], int(value.decode("ascii").strip()))
            except (UnicodeDecodeError, ValueError):
                pass
    return env


def strip_envelope(headers: HeadersIn) -> list[Header]:
    """The headers to replay a DLQ/quarantine record with: the originals, keeping only the idempotency key."""
    return [(name, value) for name, value in _kept_originals(headers) if name != H_REPLAYED_FROM]


def replay_headers(headers: HeadersIn, *, topic: str, partition: int, offset: int) -> list[Header]:
    """``strip_envelope`` plus ``streamguard.replayed-from`` naming the DLQ record being replayed."""
    return [*strip_envelope(headers), (H_REPLAYED_FROM, _text(f"{topic}/{int(partition)}/{int(offset)}"))]
