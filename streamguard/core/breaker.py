"""Circuit breaker per named dependency: closed -> open -> half-open, over a count-based sliding window.

While a dependency is down the breaker refuses calls at once (``CircuitOpen``), so the runtime can pause
the affected partitions instead of burning every message's retries into the DLQ during an outage.
Time comes from an injected clock; the state is guarded by a lock because handlers may run on thread pools.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

from streamguard.errors import CircuitOpen

__all__ = ["BreakerListener", "BreakerRegistry", "BreakerState", "CircuitBreaker"]

_log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class BreakerState(StrEnum):
    """Where a breaker is in its cycle; the values are what metrics and logs show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


BreakerListener = Callable[[str, BreakerState, BreakerState], None]
"""Called as ``fn(name, old, new)`` after each transition, outside the breaker's lock."""


class CircuitBreaker:
    """A breaker that opens when failures (or slow calls) reach a ratio of the last ``window`` calls.

    * CLOSED: every call is allowed; once at least ``min_calls`` results are in the window and the failure
      ratio reaches ``failure_ratio`` (or the slow-call ratio reaches ``slow_call_ratio``) it opens.
    * OPEN: calls are refused for ``open_for`` seconds, then the breaker is HALF_OPEN.
    * HALF_OPEN: up to ``half_open_calls`` trial calls are admitted; when all succeed the breaker closes with
      an empty window, and any failure (or, with slow-call detection on, any slow call) opens it again.

    Results reported while OPEN (calls admitted before it opened) are ignored: they say nothing new.
    Exceptions that are not ``failure_types`` (e.g. a business error raised after the dependency answered)
    count as neither success nor failure in ``guard()``; they only hand back a half-open trial slot.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_ratio: float = 0.5,
        window: int = 20,
        min_calls: int = 10,
        slow_call_seconds: float | None = None,
        slow_call_ratio: float = 1.0,
        open_for: float = 30.0,
        half_open_calls: int = 3,
        clock: Callable[[], float] = time.monotonic,
        failure_types: tuple[type[BaseException], ...] = (Exception,),
    ) -> None:
        _validate(name, failure_ratio, window, min_calls, slow_call_seconds, slow_call_ratio, open_for,
                  half_open_calls, failure_types)
        self.name = name
        self.failure_ratio = failure_ratio
        self.window = window
        self.min_calls = min_calls
        self.slow_call_seconds = slow_call_seconds
        self.slow_call_ratio = slow_call_ratio
        self.open_for = open_for
        self.half_open_calls = half_open_calls
        self.failure_types = failure_types
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=window)  # (failed, slow)
        self._failures = 0
        self._slow = 0
        self._opened_at = 0.0
        self._trials_inflight = 0
        self._trials_succeeded = 0
        self._listeners: list[BreakerListener] = []

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"

    # -- state -------------------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; reading it moves OPEN to HALF_OPEN once ``open_for`` has elapsed."""
        events: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            self._refresh(events)
            state = self._state
        self._emit(events)
        return state

    def allow(self) -> bool:
        """Ask to make one call now; in HALF_OPEN this takes one of the ``half_open_calls`` trial slots."""
        events: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            self._refresh(events)
            if self._state is BreakerState.CLOSED:
                allowed = True
            elif self._state is BreakerState.OPEN:
                allowed = False
            else:
                allowed = self._trials_inflight + self._trials_succeeded < self.half_open_calls
                if allowed:
                    self._trials_inflight += 1
        self._emit(events)
        return allowed

    def retry_after(self) -> float:
        """Seconds until the breaker half-opens; 0 when it is not open."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.open_for - self._clock())

    def record_success(self, duration: float = 0.0) -> None:
        """Report a call that returned; a call of ``slow_call_seconds`` or more also counts as slow."""
        self._record(failed=False, duration=duration)

    def record_failure(self, duration: float = 0.0) -> None:
        """Report a call that failed because of the dependency."""
        self._record(failed=True, duration=duration)

    def record_ignored(self) -> None:
        """Report a call whose outcome says nothing about the dependency; frees its half-open trial slot."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN and self._trials_inflight > 0:
                self._trials_inflight -= 1

    def add_listener(self, fn: BreakerListener) -> None:
        """Call ``fn(name, old, new)`` on every transition (used for metrics and logs)."""
        with self._lock:
            self._listeners.append(fn)

    def statistics(self) -> dict[str, Any]:
        """A snapshot for metrics, logs and ``/readyz``: state and the counts inside the window."""
        events: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            self._refresh(events)
            calls = len(self._calls)
            stats: dict[str, Any] = {
                "name": self.name,
                "state": self._state.value,
                "calls": calls,
                "failures": self._failures,
                "slow_calls": self._slow,
                "failure_ratio": self._failures / calls if calls else 0.0,
                "slow_call_ratio": self._slow / calls if calls else 0.0,
                "retry_after": (max(0.0, self._opened_at + self.open_for - self._clock())
                                if self._state is BreakerState.OPEN else 0.0),
                "half_open_inflight": self._trials_inflight,
                "half_open_succeeded": self._trials_succeeded,
            }
        self._emit(events)
        return stats

    # -- guarding calls ----------------------------------------------------------------------------------

    def guard(self) -> _Guard:
        """A (sync or async) context manager: refuse with ``CircuitOpen``, else time and record the call."""
        return _Guard(self)

    @overload
    def __call__(self) -> _Guard: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, R] | None = None) -> _Guard | Callable[P, R]:
        """``with breaker():`` is ``guard()``; ``@breaker`` wraps a sync or ``async def`` function."""
        if fn is None:
            return _Guard(self)
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with _Guard(self):
                    return await afn(*args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with _Guard(self):
                return fn(*args, **kwargs)

        return wrapper

    def _refuse(self) -> CircuitOpen:
        wait = self.retry_after()
        if wait <= 0.0:
            # Half-open with every trial slot taken: the trials decide soon, so suggest a short wait.
            wait = min(1.0, self.open_for)
        return CircuitOpen(self.name, wait)

    # -- internals (call with the lock held unless noted) -------------------------------------------------

    def _record(self, *, failed: bool, duration: float) -> None:
        slow = self.slow_call_seconds is not None and duration >= self.slow_call_seconds
        events: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            self._refresh(events)
            if self._state is BreakerState.CLOSED:
                self._push(failed, slow)
                if self._tripped():
                    self._transition(BreakerState.OPEN, events)
            elif self._state is BreakerState.HALF_OPEN:
                if self._trials_inflight > 0:
                    self._trials_inflight -= 1
                if failed or slow:
                    self._transition(BreakerState.OPEN, events)
                else:
                    self._trials_succeeded += 1
                    if self._trials_succeeded >= self.half_open_calls:
                        self._transition(BreakerState.CLOSED, events)
            # OPEN: a late result of a call admitted before the breaker opened; it changes nothing.
        self._emit(events)

    def _push(self, failed: bool, slow: bool) -> None:
        if len(self._calls) == self.window:
            old_failed, old_slow = self._calls[0]
            self._failures -= old_failed
            self._slow -= old_slow
        self._calls.append((failed, slow))
        self._failures += failed
        self._slow += slow

    def _tripped(self) -> bool:
        calls = len(self._calls)
        if calls < self.min_calls:
            return False
        if self._failures / calls >= self.failure_ratio:
            return True
        return self.slow_call_seconds is not None and self._slow / calls >= self.slow_call_ratio

    def _refresh(self, events: list[tuple[BreakerState, BreakerState]]) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.open_for:
            self._transition(BreakerState.HALF_OPEN, events)

    def _transition(self, new: BreakerState, events: list[tuple[BreakerState, BreakerState]]) -> None:
        old = self._state
        self._state = new
        self._trials_inflight = 0
        self._trials_succeeded = 0
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
        if new is BreakerState.CLOSED:
            self._calls.clear()
            self._failures = 0
            self._slow = 0
        events.append((old, new))

    def _emit(self, events: list[tuple[BreakerState, BreakerState]]) -> None:
        """Notify listeners outside the lock, so a listener may read the breaker without deadlocking."""
        if not events:
            return
        with self._lock:
            listeners = list(self._listeners)
        for old, new in events:
            for fn in listeners:
                try:
                    fn(self.name, old, new)
                except Exception:
                    _log.exception("breaker listener failed", extra={"breaker": self.name})


class _Guard:
    """One guarded call: admission on enter, timing and recording on exit. Does not swallow exceptions."""

    __slots__ = ("_breaker", "_started")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._started = 0.0

    def __enter__(self) -> CircuitBreaker:
        if not self._breaker.allow():
            raise self._breaker._refuse()
        self._started = self._breaker._clock()
        return self._breaker

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        breaker = self._breaker
        duration = max(0.0, breaker._clock() - self._started)
        if exc is None:
            breaker.record_success(duration)
        elif isinstance(exc, breaker.failure_types):
            breaker.record_failure(duration)
        else:
            breaker.record_ignored()
        return False

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)


class BreakerRegistry:
    """The breakers of one worker by dependency name, so handlers sharing a dependency share its breaker."""

    def __init__(self, **defaults: Any) -> None:
        self._defaults = defaults
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[BreakerListener] = []

    def get_or_create(self, name: str, **kw: Any) -> CircuitBreaker:
        """Return the breaker called ``name``, creating it with ``defaults | kw`` the first time.

        Settings passed for an existing name are ignored: the first registration wins, so two handlers
        cannot silently run one dependency under two different thresholds.
        """
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(name, **(self._defaults | kw))
                for fn in self._listeners:
                    breaker.add_listener(fn)
                self._breakers[name] = breaker
            return breaker

    def add_listener(self, fn: BreakerListener) -> None:
        """Attach ``fn`` to every breaker, existing and future (metrics wiring)."""
        with self._lock:
            self._listeners.append(fn)
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.add_listener(fn)

    def all(self) -> list[CircuitBreaker]:
        """Every breaker, in creation order."""
        with self._lock:
            return list(self._breakers.values())


def _validate(
    name: str,
    failure_ratio: float,
    window: int,
    min_calls: int,
    slow_call_seconds: float | None,
    slow_call_ratio: float,
    open_for: float,
    half_open_calls: int,
    failure_types: tuple[type[BaseException], ...],
) -> None:
    """Reject settings under which the breaker could never open or never close."""
    if not isinstance(name, str) or not name:
        raise ValueError("breaker name must be a non-empty string")
    if not 0 < failure_ratio <= 1:
        raise ValueError(f"failure_ratio must be in (0, 1], got {failure_ratio!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if isinstance(min_calls, bool) or not isinstance(min_calls, int) or not 1 <= min_calls <= window:
        raise ValueError(f"min_calls must be an int in [1, window={window}], got {min_calls!r}")
    if slow_call_seconds is not None and not slow_call_seconds > 0:
        raise ValueError(f"slow_call_seconds must be > 0 or None, got {slow_call_seconds!r}")
    if not 0 < slow_call_ratio <= 1:
        raise ValueError(f"slow_call_ratio must be in (0, 1], got {slow_call_ratio!r}")
    if not open_for >= 0:
        raise ValueError(f"open_for must be >= 0 seconds, got {open_for!r}")
    if isinstance(half_open_calls, bool) or not isinstance(half_open_calls, int) or half_open_calls < 1:
        raise ValueError(f"half_open_calls must be an int >= 1, got {half_open_calls!r}")
    if not isinstance(failure_types, tuple) or not failure_types or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in failure_types
    ):
        raise ValueError(f"failure_types must be a non-empty tuple of exception classes, got {failure_types!r}")
