"""Circuit breaker: every transition under a fake clock, slow calls, min_calls, listeners, guards, threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from streamguard.core.breaker import BreakerRegistry, BreakerState, CircuitBreaker
from streamguard.errors import CircuitOpen


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **kw: object) -> CircuitBreaker:
    settings: dict[str, object] = {"window": 10, "min_calls": 4, "failure_ratio": 0.5, "open_for": 30.0,
                                   "half_open_calls": 2}
    settings.update(kw)
    return CircuitBreaker("db", clock=clock, **settings)  # type: ignore[arg-type]


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.min_calls):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_stays_closed_below_min_calls_even_if_all_fail() -> None:
    breaker = make(FakeClock())
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_opens_exactly_when_failure_ratio_is_reached() -> None:
    breaker = make(FakeClock())
    for _ in range(3):
        breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED  # 2/5 = 0.4
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN  # 3/6 = 0.5


def test_window_slides_so_old_failures_age_out() -> None:
    breaker = make(FakeClock(), window=4, min_calls=4, failure_ratio=0.75)
    breaker.record_failure()
    breaker.record_failure()
    for _ in range(4):
        breaker.record_success()
    stats = breaker.statistics()
    assert (stats["calls"], stats["failures"]) == (4, 0)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED  # 2/4 in the window, the two old failures are gone
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_open_refuses_then_half_opens_after_open_for() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    assert not breaker.allow()
    assert breaker.retry_after() == 30.0
    clock.advance(29.5)
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.retry_after() == 0.0


def test_half_open_admits_limited_trials_and_closes_with_a_fresh_window() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()  # half_open_calls=2
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # the successful trial still counts against the budget
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics()["calls"] == 0
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED  # min_calls applies again after the reset


def test_any_half_open_failure_reopens_for_another_full_period() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 30.0


def test_results_arriving_while_open_change_nothing() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.advance(10)
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 20.0


def test_slow_calls_open_the_breaker_when_their_ratio_is_reached() -> None:
    breaker = make(FakeClock(), slow_call_seconds=2.0, slow_call_ratio=0.75, failure_ratio=1.0)
    breaker.record_success(duration=5.0)
    breaker.record_success(duration=1.9)
    breaker.record_success(duration=2.0)
    breaker.record_success(duration=0.1)
    assert breaker.state is BreakerState.CLOSED  # 2 slow / 4
    breaker.record_failure(duration=3.0)
    breaker.record_success(duration=9.0)
    assert breaker.statistics()["slow_calls"] == 4
    assert breaker.state is BreakerState.CLOSED  # 4/6
    breaker.record_success(duration=9.0)
    breaker.record_success(duration=9.0)
    assert breaker.state is BreakerState.OPEN  # 6/8 = 0.75


def test_slow_calls_ignored_without_a_threshold() -> None:
    breaker = make(FakeClock())
    for _ in range(10):
        breaker.record_success(duration=1e6)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics()["slow_calls"] == 0


def test_slow_trial_call_reopens_half_open_breaker() -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_seconds=1.0)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()
    breaker.record_success(duration=1.5)
    assert breaker.state is BreakerState.OPEN


def test_listeners_see_every_transition_in_order() -> None:
    clock = FakeClock()
    breaker = make(clock)
    events: list[tuple[str, BreakerState, BreakerState]] = []
    breaker.add_listener(lambda name, old, new: events.append((name, old, new)))
    trip(breaker)
    clock.advance(30)
    breaker.allow()
    breaker.record_failure()
    clock.advance(30)
    breaker.allow()
    breaker.allow()
    breaker.record_success()
    breaker.record_success()
    opened, half, closed = BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED
    assert events == [
        ("db", closed, opened), ("db", opened, half), ("db", half, opened), ("db", opened, half), ("db", half, closed)
    ]


def test_a_failing_listener_does_not_break_the_breaker() -> None:
    breaker = make(FakeClock())
    seen: list[BreakerState] = []

    def bad(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("boom")

    breaker.add_listener(bad)
    breaker.add_listener(lambda name, old, new: seen.append(new))
    trip(breaker)
    assert seen == [BreakerState.OPEN]


def test_listener_may_read_the_breaker_without_deadlock() -> None:
    breaker = make(FakeClock())
    seen: list[object] = []
    breaker.add_listener(lambda name, old, new: seen.append(breaker.statistics()["state"]))
    trip(breaker)
    assert seen == ["open"]


def test_guard_records_outcomes_and_durations_and_refuses_when_open() -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_seconds=1.0, slow_call_ratio=1.0, failure_ratio=1.0, min_calls=2)
    with breaker.guard():
        clock.advance(1.5)
    with pytest.raises(ConnectionError), breaker():
        clock.advance(2.0)
        raise ConnectionError("down")
    stats = breaker.statistics()
    assert (stats["calls"], stats["failures"], stats["slow_calls"]) == (2, 1, 2)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as info, breaker.guard():
        pytest.fail("must not run")
    assert info.value.name == "db"
    assert info.value.retry_after == 30.0


def test_guard_ignores_non_failure_types_and_frees_the_trial_slot() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_types=(ConnectionError,), half_open_calls=1)
    trip(breaker)
    clock.advance(30)
    with pytest.raises(KeyError), breaker.guard():
        raise KeyError("business error")
    assert breaker.state is BreakerState.HALF_OPEN
    with breaker.guard():
        pass
    assert breaker.state is BreakerState.CLOSED


def test_half_open_refusal_suggests_a_short_positive_wait() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_calls=1)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()
    with pytest.raises(CircuitOpen) as info, breaker.guard():
        pass
    assert 0 < info.value.retry_after <= 1.0


def test_async_guard_and_decorators() -> None:
    clock = FakeClock()
    breaker = make(clock, min_calls=5, failure_ratio=0.4)

    @breaker
    async def call_async(fail: bool) -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    @breaker
    def call_sync() -> int:
        return 7

    async def scenario() -> None:
        assert await call_async(False) == "ok"
        async with breaker.guard():
            pass
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await call_async(True)
        with pytest.raises(CircuitOpen):
            await call_async(False)

    assert call_sync() == 7
    asyncio.run(scenario())
    assert breaker.state is BreakerState.OPEN
    assert call_async.__name__ == "call_async"


def test_thread_safety_smoke_counts_every_result() -> None:
    breaker = CircuitBreaker("svc", window=100_000, min_calls=100_000, failure_ratio=1.0)
    threads = 8
    per_thread = 2000
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        barrier.wait()
        for n in range(per_thread):
            if breaker.allow():
                (breaker.record_failure if (n + i) % 2 else breaker.record_success)()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    stats = breaker.statistics()
    assert stats["calls"] == threads * per_thread
    assert stats["failures"] == threads * per_thread // 2
    assert breaker.state is BreakerState.CLOSED


def test_registry_shares_breakers_by_name_and_wires_listeners() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(clock=clock, min_calls=1, window=1)
    seen: list[tuple[str, BreakerState]] = []
    first = registry.get_or_create("db")
    registry.add_listener(lambda name, old, new: seen.append((name, new)))
    assert registry.get_or_create("db", open_for=1.0) is first
    assert first.open_for == 30.0  # first registration wins
    other = registry.get_or_create("api", open_for=5.0)
    assert other.open_for == 5.0
    assert registry.all() == [first, other]
    first.record_failure()
    other.record_failure()
    assert seen == [("db", BreakerState.OPEN), ("api", BreakerState.OPEN)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_ratio": 0}, "failure_ratio"),
        ({"failure_ratio": 1.5}, "failure_ratio"),
        ({"window": 0}, "window"),
        ({"min_calls": 21}, "min_calls"),
        ({"slow_call_seconds": 0}, "slow_call_seconds"),
        ({"slow_call_ratio": 0}, "slow_call_ratio"),
        ({"open_for": -1}, "open_for"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"failure_types": ()}, "failure_types"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker("x", **kwargs)  # type: ignore[arg-type]
