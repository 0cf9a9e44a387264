"""Retry policy: given a failure, decide *retry after N seconds* or *give up*; the runtime acts on it.

The policy never sleeps and never calls the handler. It evaluates tenacity's stop/wait strategies on a
synthetic ``RetryCallState`` built from the attempt count and two timestamps, so the runtime can keep
one policy object per handler and schedule retries without blocking other keys or partitions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from streamguard.errors import CircuitOpen, PermanentFailure, Quarantine, RetryLater

__all__ = ["NO_RETRY", "Decision", "GiveUp", "Retry", "RetryAfter"]


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Run the message again after ``delay`` seconds."""

    delay: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop retrying; the runtime dead-letters (or quarantines, for ``Quarantine``) the message."""

    reason: str


Decision = RetryAfter | GiveUp


class _wait_jittered_exponential(tenacity.wait_exponential):
    """Full jitter over ``[min, exponential cap]`` drawn from an injected RNG.

    tenacity's ``wait_random_exponential`` draws from the global ``random`` module and starts at its
    ``min``; we keep its window but take the RNG as a parameter so tests (and replays) are deterministic.
    The floor is ``backoff[0]`` rather than 0 so a retry is never an instant re-delivery loop.
    """

    def __init__(self, multiplier: float, max: float, exp_base: float, min: float, rng: random.Random) -> None:
        super().__init__(multiplier=multiplier, max=max, exp_base=exp_base, min=min)
        self._rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        high = super().__call__(retry_state)
        return self._rng.uniform(self.min, high)


class Retry:
    """A retry policy built from tenacity strategies; ``decide`` turns one failure into a ``Decision``.

    ``attempts`` counts every attempt including the first, so ``attempts=1`` never retries. ``wait`` and
    ``stop`` replace the strategies derived from ``backoff``/``jitter`` and ``attempts``/``max_elapsed``.
    ``max_elapsed`` follows tenacity's ``stop_after_delay``: no retry is scheduled once that long has passed
    since the first failure (the last scheduled retry may still run up to one wait later).
    """

    __slots__ = ("_custom_stop", "_retrying", "_stop_attempts", "_stop_time", "attempts", "backoff",
                 "jitter", "max_elapsed", "multiplier", "not_on", "on", "stop", "wait")

    def __init__(
        self,
        attempts: int = 5,
        backoff: tuple[float, float] = (0.2, 30.0),
        jitter: bool = True,
        on: tuple[type[BaseException], ...] = (Exception,),
        not_on: tuple[type[BaseException], ...] = (),
        max_elapsed: float | None = None,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
        wait: wait_base | None = None,
        stop: stop_base | None = None,
    ) -> None:
        _validate(attempts, backoff, on, not_on, max_elapsed, multiplier)
        self.attempts = attempts
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.jitter = jitter
        self.on = on
        self.not_on = not_on
        self.max_elapsed = max_elapsed
        self.multiplier = float(multiplier)
        low, high = self.backoff
        if wait is None:
            if jitter:
                wait = _wait_jittered_exponential(low, high, self.multiplier, low, rng or random.Random())
            else:
                wait = tenacity.wait_exponential(multiplier=low, max=high, exp_base=self.multiplier, min=low)
        self.wait: wait_base = wait
        self._stop_attempts: stop_base = tenacity.stop_after_attempt(attempts)
        self._stop_time: stop_base | None = None if max_elapsed is None else tenacity.stop_after_delay(max_elapsed)
        self._custom_stop = stop is not None
        if stop is None:
            stop = self._stop_attempts if self._stop_time is None else self._stop_attempts | self._stop_time
        self.stop: stop_base = stop
        # A Retrying object only to give the synthetic call state a real owner; it never runs anything.
        self._retrying = tenacity.Retrying(stop=self.stop, wait=self.wait, reraise=True)

    def __repr__(self) -> str:
        return (f"Retry(attempts={self.attempts}, backoff={self.backoff}, jitter={self.jitter}, "
                f"max_elapsed={self.max_elapsed}, multiplier={self.multiplier})")

    def decide(self, error: BaseException, attempt: int, first_failure_at: float, now: float) -> Decision:
        """Classify ``error`` after ``attempt`` attempts (1 after the first failure); times in seconds.

        Handler signals win over classification: ``PermanentFailure``/``Quarantine`` give up at once and
        ``RetryLater(delay)`` is honoured as given (unless the stop strategy says stop).
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt must be an int >= 1 (attempts made so far), got {attempt!r}")
        final = _final_signal(error)
        if final:
            return GiveUp(final)
        state = self._state(error, attempt, first_failure_at, now)
        if isinstance(error, RetryLater):
            state.upcoming_sleep = max(0.0, error.delay)
            stopped = self._stopped(state)
            if stopped:
                return GiveUp(stopped)
            return RetryAfter(state.upcoming_sleep, "retry requested by handler")
        if (self.not_on and isinstance(error, self.not_on)) or not isinstance(error, self.on):
            return GiveUp(f"not retryable: {_type_name(error)}")
        delay = max(0.0, float(self.wait(state)))
        if isinstance(error, CircuitOpen):
            # No point in coming back before the breaker would admit a trial call.
            delay = max(delay, error.retry_after)
        state.upcoming_sleep = delay
        stopped = self._stopped(state)
        if stopped:
            return GiveUp(stopped)
        return RetryAfter(delay, f"attempt {attempt} failed: {_type_name(error)}")

    def _state(
        self, error: BaseException, attempt: int, first_failure_at: float, now: float
    ) -> tenacity.RetryCallState:
        """Build the tenacity call state the strategies read: attempt number, elapsed time, outcome."""
        state = tenacity.RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        state.start_time = first_failure_at
        # A clock that steps backwards must not make the elapsed time negative.
        state.outcome_timestamp = max(now, first_failure_at)
        outcome = tenacity.Future(attempt)
        outcome.set_exception(error)
        state.outcome = outcome
        return state

    def _stopped(self, state: tenacity.RetryCallState) -> str:
        """Return why the stop strategy says stop, or "" to go on."""
        if not self.stop(state):
            return ""
        if self._custom_stop:
            return "stop condition met"
        if self._stop_attempts(state):
            return "attempts exhausted"
        return "time exhausted"


def _final_signal(error: BaseException) -> str:
    """Return a give-up reason when the handler said never to retry (also inside an ExceptionGroup)."""
    if isinstance(error, Quarantine):
        return "quarantine requested"
    if isinstance(error, PermanentFailure):
        return "permanent failure"
    if isinstance(error, BaseExceptionGroup):
        if error.subgroup(Quarantine) is not None:
            return "quarantine requested"
        if error.subgroup(PermanentFailure) is not None:
            return "permanent failure"
    return ""


def _type_name(error: BaseException) -> str:
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _validate(
    attempts: int,
    backoff: tuple[float, float],
    on: tuple[type[BaseException], ...],
    not_on: tuple[type[BaseException], ...],
    max_elapsed: float | None,
    multiplier: float,
) -> None:
    """Reject a policy that cannot work now, at configuration time, instead of at the first failure."""
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an int >= 1 (total attempts including the first), got {attempts!r}")
    if not isinstance(backoff, tuple) or len(backoff) != 2:
        raise ValueError(f"backoff must be a (min_seconds, max_seconds) tuple, got {backoff!r}")
    low, high = backoff
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in backoff):
        raise ValueError(f"backoff values must be finite numbers, got {backoff!r}")
    if not 0 <= low <= high:
        raise ValueError(f"backoff must satisfy 0 <= min <= max, got min={low!r} max={high!r}")
    if not (isinstance(multiplier, int | float) and math.isfinite(multiplier) and multiplier >= 1):
        raise ValueError(f"multiplier must be a finite number >= 1, got {multiplier!r}")
    if max_elapsed is not None and not (
        isinstance(max_elapsed, int | float) and math.isfinite(max_elapsed) and max_elapsed > 0
    ):
        raise ValueError(f"max_elapsed must be a finite number of seconds > 0 or None, got {max_elapsed!r}")
    for label, types in (("on", on), ("not_on", not_on)):
        if not isinstance(types, tuple) or not all(isinstance(t, type) and issubclass(t, BaseException)
                                                   for t in types):
            raise ValueError(f"{label} must be a tuple of exception classes, got {types!r}")
    if not on:
        raise ValueError("on must name at least one exception class (use attempts=1 to never retry)")


NO_RETRY = Retry(attempts=1)
