"""Retry policy: exact attempt counts, backoff bounds, classification, handler signals, time limits."""

from __future__ import annotations

import random

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from streamguard.core.retry import NO_RETRY, GiveUp, Retry, RetryAfter
from streamguard.errors import CircuitOpen, HandlerTimeout, PermanentFailure, Quarantine, RetryLater


def run_until_give_up(policy: Retry, error: BaseException, limit: int = 1000) -> tuple[int, list[float], GiveUp]:
    """Drive the policy like the runtime does; return total attempts made, delays, and the final decision."""
    now = 100.0
    first = now
    delays: list[float] = []
    for attempt in range(1, limit):
        decision = policy.decide(error, attempt, first, now)
        if isinstance(decision, GiveUp):
            return attempt, delays, decision
        delays.append(decision.delay)
        now += decision.delay
    raise AssertionError("policy never gave up")


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 10])
def test_attempts_counts_every_attempt_including_the_first(attempts: int) -> None:
    made, delays, decision = run_until_give_up(Retry(attempts=attempts, jitter=False), ValueError("x"))
    assert made == attempts
    assert len(delays) == attempts - 1
    assert decision == GiveUp("attempts exhausted")


def test_no_retry_gives_up_on_first_failure_even_for_retry_later() -> None:
    assert NO_RETRY.decide(ValueError("x"), 1, 0.0, 0.0) == GiveUp("attempts exhausted")
    assert NO_RETRY.decide(RetryLater(1.0), 1, 0.0, 0.0) == GiveUp("attempts exhausted")


def test_exponential_backoff_without_jitter_is_exact_and_capped() -> None:
    policy = Retry(attempts=8, backoff=(0.5, 5.0), jitter=False, multiplier=2.0)
    _, delays, _ = run_until_give_up(policy, ValueError("x"))
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_multiplier_sets_the_growth_rate() -> None:
    policy = Retry(attempts=4, backoff=(1.0, 100.0), jitter=False, multiplier=3.0)
    _, delays, _ = run_until_give_up(policy, ValueError("x"))
    assert delays == [1.0, 3.0, 9.0]


@given(
    low=st.floats(min_value=0.0, max_value=10.0),
    span=st.floats(min_value=0.0, max_value=100.0),
    multiplier=st.floats(min_value=1.0, max_value=5.0),
    attempt=st.integers(min_value=1, max_value=200),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_jittered_delay_stays_within_floor_and_exponential_cap(
    low: float, span: float, multiplier: float, attempt: int, seed: int
) -> None:
    high = low + span
    policy = Retry(attempts=1000, backoff=(low, high), multiplier=multiplier, rng=random.Random(seed))
    decision = policy.decide(ValueError("x"), attempt, 0.0, 0.0)
    assert isinstance(decision, RetryAfter)
    cap = min(high, low * multiplier ** min(attempt - 1, 1000)) if low > 0 else 0.0
    assert low - 1e-9 <= decision.delay <= max(cap, low) + 1e-9


def test_jitter_actually_varies_and_is_reproducible_with_a_seeded_rng() -> None:
    def delays(seed: int) -> list[float]:
        policy = Retry(attempts=100, backoff=(1.0, 60.0), rng=random.Random(seed))
        return [policy.decide(ValueError("x"), 8, 0.0, 0.0).delay for _ in range(20)]  # type: ignore[union-attr]

    assert delays(1) == delays(1)
    assert len(set(delays(1))) > 10


@pytest.mark.parametrize("signal", [PermanentFailure("bad"), Quarantine("poison")])
def test_permanent_and_quarantine_give_up_immediately_even_if_listed_in_on(signal: BaseException) -> None:
    policy = Retry(attempts=10, on=(BaseException,))
    decision = policy.decide(signal, 1, 0.0, 0.0)
    assert isinstance(decision, GiveUp)
    assert decision.reason in ("permanent failure", "quarantine requested")


def test_signals_inside_an_exception_group_give_up() -> None:
    group = ExceptionGroup("tasks", [ValueError("a"), PermanentFailure("b")])
    assert Retry().decide(group, 1, 0.0, 0.0) == GiveUp("permanent failure")


def test_exceptions_outside_on_or_inside_not_on_are_not_retried() -> None:
    policy = Retry(attempts=10, on=(ConnectionError, HandlerTimeout), not_on=(ConnectionRefusedError,))
    assert isinstance(policy.decide(ConnectionResetError(), 1, 0.0, 0.0), RetryAfter)
    assert isinstance(policy.decide(HandlerTimeout("slow"), 1, 0.0, 0.0), RetryAfter)
    assert policy.decide(ConnectionRefusedError(), 1, 0.0, 0.0) == GiveUp("not retryable: ConnectionRefusedError")
    assert policy.decide(KeyError("k"), 1, 0.0, 0.0) == GiveUp("not retryable: KeyError")


def test_base_exceptions_are_not_retried_by_default() -> None:
    assert Retry().decide(KeyboardInterrupt(), 1, 0.0, 0.0) == GiveUp("not retryable: KeyboardInterrupt")


def test_retry_later_delay_is_honoured_over_backoff_and_classification() -> None:
    policy = Retry(attempts=3, backoff=(0.1, 1.0), on=(ConnectionError,))
    assert policy.decide(RetryLater(42.5), 1, 0.0, 0.0) == RetryAfter(42.5, "retry requested by handler")
    assert policy.decide(RetryLater(-3), 2, 0.0, 0.0) == RetryAfter(0.0, "retry requested by handler")
    assert policy.decide(RetryLater(42.5), 3, 0.0, 0.0) == GiveUp("attempts exhausted")


def test_circuit_open_waits_at_least_until_the_breaker_half_opens() -> None:
    policy = Retry(attempts=5, backoff=(0.1, 1.0), jitter=False)
    decision = policy.decide(CircuitOpen("db", 12.0), 1, 0.0, 0.0)
    assert decision == RetryAfter(12.0, "attempt 1 failed: streamguard.errors.CircuitOpen")


def test_max_elapsed_gives_up_once_the_time_since_first_failure_is_spent() -> None:
    policy = Retry(attempts=1000, backoff=(1.0, 1.0), jitter=False, max_elapsed=10.0)
    assert isinstance(policy.decide(ValueError(), 3, 100.0, 109.99), RetryAfter)
    assert policy.decide(ValueError(), 3, 100.0, 110.0) == GiveUp("time exhausted")
    assert policy.decide(RetryLater(5), 3, 100.0, 111.0) == GiveUp("time exhausted")
    made, _, decision = run_until_give_up(policy, ValueError())
    assert (made, decision) == (11, GiveUp("time exhausted"))


def test_attempt_limit_is_reported_before_time_limit_when_both_hit() -> None:
    policy = Retry(attempts=2, max_elapsed=1.0)
    assert policy.decide(ValueError(), 2, 0.0, 5.0) == GiveUp("attempts exhausted")


def test_clock_stepping_backwards_does_not_break_time_limit() -> None:
    policy = Retry(attempts=10, max_elapsed=5.0)
    assert isinstance(policy.decide(ValueError(), 1, 100.0, 50.0), RetryAfter)


def test_custom_tenacity_strategies_replace_the_derived_ones() -> None:
    policy = Retry(wait=tenacity.wait_fixed(7), stop=tenacity.stop_after_attempt(2))
    assert policy.decide(ValueError(), 1, 0.0, 0.0) == RetryAfter(7.0, "attempt 1 failed: ValueError")
    assert policy.decide(ValueError(), 2, 0.0, 0.0) == GiveUp("stop condition met")


def test_wait_strategies_see_the_failure_outcome() -> None:
    policy = Retry(wait=tenacity.wait_exception(lambda e: 3.0 if isinstance(e, TimeoutError) else 1.0))
    assert policy.decide(TimeoutError(), 1, 0.0, 0.0).delay == 3.0  # type: ignore[union-attr]
    assert policy.decide(ValueError(), 1, 0.0, 0.0).delay == 1.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "attempts must be an int >= 1"),
        ({"attempts": 2.5}, "attempts must be an int >= 1"),
        ({"backoff": (5.0, 1.0)}, "0 <= min <= max"),
        ({"backoff": (-1.0, 1.0)}, "0 <= min <= max"),
        ({"backoff": (1.0, float("inf"))}, "finite"),
        ({"multiplier": 0.5}, "multiplier must be"),
        ({"max_elapsed": 0}, "max_elapsed must be"),
        ({"on": ()}, "on must name at least one"),
        ({"not_on": (int,)}, "not_on must be a tuple of exception classes"),
    ],
)
def test_invalid_arguments_are_rejected_with_a_clear_message(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempt must be an int >= 1"):
        Retry().decide(ValueError(), 0, 0.0, 0.0)
