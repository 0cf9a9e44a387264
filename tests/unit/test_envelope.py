"""DLQ / quarantine / retry header schema: round trips, size cap, real-cause unwrapping, safe stacks."""

from __future__ import annotations

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from streamguard.core import envelope as ev
from streamguard.core.envelope import (
    Envelope,
    FailureInfo,
    Header,
    dead_letter_headers,
    describe_error,
    parse_envelope,
    record_size,
    replay_headers,
    retry_headers,
    strip_envelope,
)
from streamguard.errors import DecodeError, HandlerTimeout, PermanentFailure, Quarantine


def info(**kw: object) -> FailureInfo:
    base: dict[str, object] = {
        "error_type": "builtins.ValueError", "error_message": "bad value", "stack": "Traceback...\nValueError",
        "attempts": 3, "first_failure_ms": 1_700_000_000_000, "last_failure_ms": 1_700_000_005_000,
        "handler": "orders.handle", "worker_id": "host-1/42", "reason": "dead-letter", "idempotency_key": "order-7",
    }
    base.update(kw)
    return FailureInfo(**base)  # type: ignore[arg-type]


def dlq(original: ev.HeadersIn, failure: FailureInfo | None = None, **kw: object) -> list[Header]:
    args: dict[str, object] = {"source_topic": "orders", "partition": 3, "offset": 1234,
                               "timestamp_ms": 1_699_000_000_000, "info": failure or info(), "key_len": 10,
                               "value_len": 100}
    args.update(kw)
    return dead_letter_headers(original, **args)  # type: ignore[arg-type]


def names(headers: list[Header]) -> list[str]:
    return [n for n, _ in headers]


def test_round_trip_through_parse_envelope() -> None:
    headers = dlq([("trace-id", b"abc")])
    assert all(isinstance(v, bytes) and v.decode("utf-8") is not None for _, v in headers)
    assert parse_envelope(headers) == Envelope(
        source_topic="orders", source_partition=3, source_offset=1234, source_timestamp_ms=1_699_000_000_000,
        error_type="builtins.ValueError", error_message="bad value", stack="Traceback...\nValueError", attempts=3,
        first_failure_ms=1_700_000_000_000, last_failure_ms=1_700_000_005_000, handler="orders.handle",
        worker_id="host-1/42", reason="dead-letter", idempotency_key="order-7",
    )


def test_exact_header_names_are_used() -> None:
    got = set(names(dlq(None))) | set(names(retry_headers(None, source_topic="t", partition=0, offset=0,
                                                          not_before_ms=5, attempt=1, timestamp_ms=1)))
    assert got == {
        "streamguard.source.topic", "streamguard.source.partition", "streamguard.source.offset",
        "streamguard.source.timestamp", "streamguard.error.type", "streamguard.error.message",
        "streamguard.error.stack", "streamguard.attempts", "streamguard.first-failure", "streamguard.last-failure",
        "streamguard.handler", "streamguard.worker", "streamguard.reason", "streamguard.idempotency-key",
        "streamguard.not-before", "streamguard.retry.attempt",
    }
    assert ev.H_REPLAYED_FROM == "streamguard.replayed-from"


def test_original_headers_come_first_and_unchanged_including_duplicates() -> None:
    original: list[Header] = [("a", b"1"), ("a", b"2"), ("bin", b"\xff\x00")]
    headers = dlq(original)
    assert headers[:3] == original


def test_client_header_shapes_are_accepted_and_normalised_to_bytes() -> None:
    assert dlq([("s", "text"), ("nul", None)])[:2] == [("s", b"text"), ("nul", b"")]
    assert dlq({"s": "é", "b": b"\x00"})[:2] == [("s", "é".encode()), ("b", b"\x00")]
    assert parse_envelope({ev.H_ATTEMPTS: "4", ev.H_HANDLER: None}).attempts == 4


def test_timestamp_and_idempotency_key_are_optional() -> None:
    headers = dlq(None, info(idempotency_key=None), timestamp_ms=None)
    assert ev.H_SOURCE_TIMESTAMP not in names(headers)
    assert ev.H_IDEMPOTENCY_KEY not in names(headers)


def test_second_dead_lettering_replaces_failure_headers_but_keeps_identity_and_provenance() -> None:
    first = dlq([("trace-id", b"abc")])
    replayed = replay_headers(first, topic="orders.dlq", partition=0, offset=77)
    second = dlq(replayed, info(error_message="still bad", attempts=1, idempotency_key="orders/0/999"),
                 source_topic="orders", partition=1, offset=999)
    env = parse_envelope(second)
    assert names(second).count(ev.H_ERROR_MESSAGE) == 1
    assert names(second).count(ev.H_SOURCE_OFFSET) == 1
    assert (env.error_message, env.attempts, env.source_offset) == ("still bad", 1, 999)
    assert env.idempotency_key == "order-7"  # the first identity wins, so dedup still works
    assert names(second).count(ev.H_IDEMPOTENCY_KEY) == 1
    assert env.replayed_from == "orders.dlq/0/77"
    assert second[0] == ("trace-id", b"abc")


def test_strip_envelope_keeps_user_headers_and_only_the_idempotency_key() -> None:
    headers = replay_headers(dlq([("trace-id", b"abc"), ("empty", b"")]), topic="orders.dlq", partition=2, offset=5)
    stripped = strip_envelope(headers)
    assert stripped == [("trace-id", b"abc"), ("empty", b""), (ev.H_IDEMPOTENCY_KEY, b"order-7")]
    assert strip_envelope(None) == []


def test_retry_headers_carry_schedule_and_are_dropped_when_dead_lettered() -> None:
    headers = retry_headers([("trace-id", b"x")], source_topic="orders", partition=1, offset=10,
                            not_before_ms=1_700_000_030_000, attempt=2, timestamp_ms=5, info=info(reason="retry"))
    env = parse_envelope(headers)
    assert (env.reason, env.not_before_ms, env.retry_attempt, env.source_topic) == ("retry", 1_700_000_030_000, 2,
                                                                                    "orders")
    assert env.error_type == "builtins.ValueError"
    final = dlq(headers)
    assert ev.H_NOT_BEFORE not in names(final)
    assert ev.H_RETRY_ATTEMPT not in names(final)
    assert parse_envelope(final).reason == "dead-letter"


def test_retry_headers_without_info_are_minimal() -> None:
    headers = retry_headers(None, source_topic="t", partition=0, offset=1, not_before_ms=9, attempt=1)
    assert names(headers) == [ev.H_SOURCE_TOPIC, ev.H_SOURCE_PARTITION, ev.H_SOURCE_OFFSET, ev.H_REASON,
                              ev.H_NOT_BEFORE, ev.H_RETRY_ATTEMPT]


def test_dead_letter_rejects_an_unknown_reason() -> None:
    with pytest.raises(ValueError, match=r"info\.reason"):
        dlq(None, info(reason="retry"))


def test_parse_ignores_malformed_and_null_values() -> None:
    env = parse_envelope([(ev.H_ATTEMPTS, b"three"), (ev.H_SOURCE_OFFSET, None), (ev.H_SOURCE_PARTITION, b"\xff"),
                          (ev.H_HANDLER, b"h\xffx"), ("other", b"1")])
    assert env.attempts is None and env.source_offset is None and env.source_partition is None
    assert env.handler == "h\ufffdx"
    assert parse_envelope(None) == Envelope()


def test_huge_stack_is_cut_before_the_message() -> None:
    big_stack = "frame\n" * 50_000 + "ValueError: the end"
    headers = dlq(None, info(stack=big_stack, error_message="m" * 1000), max_record_bytes=8_000,
                  max_stack_bytes=10**9, max_message_bytes=10**9)
    env = parse_envelope(headers)
    assert env.error_message == "m" * 1000
    assert env.stack is not None and env.stack.endswith("ValueError: the end")
    assert env.stack.startswith("...[truncated]")
    assert record_size(10, 100, headers) <= 8_000


def test_default_caps_bound_message_and_stack_even_when_the_record_has_room() -> None:
    headers = dlq(None, info(stack="s" * 100_000, error_message="é" * 100_000))
    env = parse_envelope(headers)
    assert env.stack is not None and len(env.stack.encode()) <= ev.DEFAULT_MAX_STACK_BYTES
    assert env.error_message is not None and len(env.error_message.encode()) <= ev.DEFAULT_MAX_MESSAGE_BYTES
    for _, value in headers:
        value.decode("utf-8")  # never a split multi-byte character


def test_oversized_original_still_gets_minimal_headers() -> None:
    headers = dlq([("big", b"x" * 5000)], info(stack="s" * 500, error_message="m" * 500), value_len=10_000,
                  max_record_bytes=1_000)
    env = parse_envelope(headers)
    assert (env.error_message, env.stack) == ("", "")
    assert env.error_type == "builtins.ValueError" and env.source_offset == 1234
    assert headers[0] == ("big", b"x" * 5000)


@settings(max_examples=200, deadline=None)
@given(
    key_len=st.integers(0, 5_000),
    value_len=st.integers(0, 200_000),
    header_sizes=st.lists(st.integers(0, 3_000), max_size=5),
    message=st.text(max_size=3_000),
    stack_lines=st.integers(0, 2_000),
    cap=st.integers(1_000, 300_000),
)
def test_record_never_exceeds_the_cap_when_the_original_fits(
    key_len: int, value_len: int, header_sizes: list[int], message: str, stack_lines: int, cap: int
) -> None:
    original: list[Header] = [(f"h{i}", b"v" * n) for i, n in enumerate(header_sizes)]
    stack = "".join(f'  File "x.py", line {i}, in f\n' for i in range(stack_lines)) + "ValueError: boom"
    sizes = {"key_len": key_len, "value_len": value_len, "max_message_bytes": 10**9, "max_stack_bytes": 10**9}
    headers = dlq(original, info(error_message=message, stack=stack), max_record_bytes=cap, **sizes)
    assert headers[: len(original)] == original
    env = parse_envelope(headers)
    assert env.stack is not None and env.error_message is not None
    minimal = dlq(original, info(error_message="", stack=""), max_record_bytes=10**9, **sizes)
    full = dlq(original, info(error_message=message, stack=stack), max_record_bytes=10**9, **sizes)
    if record_size(key_len, value_len, minimal) <= cap:
        assert record_size(key_len, value_len, headers) <= cap
        if env.stack != stack:
            assert record_size(key_len, value_len, headers) > cap - 32  # cut only as far as needed
    if env.error_message != message:
        assert env.stack == ""  # the message is only cut once the stack is gone...
        no_stack = dlq(original, info(error_message=message, stack=""), max_record_bytes=10**9, **sizes)
        assert record_size(key_len, value_len, no_stack) > cap  # ...and the full message alone does not fit
    if record_size(key_len, value_len, full) <= cap:
        assert headers == full  # nothing is cut without need


# -- describe_error -------------------------------------------------------------------------------------------


def raise_value_error() -> None:
    secret_local = "hunter2-password"
    raise ValueError(f"bad input of length {len(secret_local)}")


def capture(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def test_plain_error_is_described_with_a_stack() -> None:
    kind, message, stack = describe_error(capture(raise_value_error))
    assert (kind, message) == ("ValueError", "bad input of length 16")
    assert "raise_value_error" in stack and stack.endswith("ValueError: bad input of length 16")


def test_stack_never_contains_local_variable_values() -> None:
    _, _, stack = describe_error(capture(raise_value_error))
    assert "hunter2" not in stack


@pytest.mark.parametrize("wrapper", [RuntimeError, Exception, PermanentFailure, Quarantine, DecodeError])
def test_generic_and_streamguard_wrappers_are_unwrapped(wrapper: type[Exception]) -> None:
    def wrapped() -> None:
        try:
            raise_value_error()
        except ValueError as exc:
            raise wrapper("handler failed") from exc

    kind, message, stack = describe_error(capture(wrapped))
    assert kind == "ValueError"
    assert message == "bad input of length 16"
    assert stack.endswith("ValueError: bad input of length 16")


def test_specific_errors_and_user_subclasses_are_the_real_cause() -> None:
    class InvalidOrder(PermanentFailure):
        pass

    def sub() -> None:
        raise InvalidOrder("no sku") from KeyError("sku")

    def timeout() -> None:
        raise HandlerTimeout("took 30s") from TimeoutError()

    def implicit() -> None:
        try:
            raise KeyError("a")
        except KeyError:
            raise RuntimeError("while handling") from None

    assert describe_error(capture(sub))[0].endswith("InvalidOrder")
    assert describe_error(capture(timeout))[0] == "streamguard.errors.HandlerTimeout"
    assert describe_error(capture(implicit))[:2] == ("RuntimeError", "while handling")


def test_exception_group_reports_its_first_leaf() -> None:
    def grouped() -> None:
        raise ExceptionGroup("outer", [ExceptionGroup("inner", [ConnectionError("refused")]), ValueError("b")])

    assert describe_error(capture(grouped))[:2] == ("ConnectionError", "refused")


def test_tenacity_retry_error_reports_the_last_attempt() -> None:
    @tenacity.retry(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    def flaky() -> None:
        raise ConnectionResetError("peer reset")

    assert describe_error(capture(flaky))[:2] == ("ConnectionResetError", "peer reset")


def test_cause_cycles_terminate() -> None:
    a = RuntimeError("a")
    b = RuntimeError("b")
    a.__cause__ = b
    b.__cause__ = a
    assert describe_error(a)[0] == "RuntimeError"


def test_stack_is_truncated_to_the_innermost_lines() -> None:
    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("deep")
        recurse(n - 1)

    _, _, stack = describe_error(capture(lambda: recurse(50)), max_stack_lines=6)
    lines = stack.splitlines()
    assert len(lines) == 7
    assert lines[0].startswith("... ") and "lines omitted" in lines[0]
    assert lines[-1] == "ValueError: deep"
    assert describe_error(ValueError("x"), max_stack_lines=0)[2] == ""
