"""Properties of the per-partition key scheduler (the bulkhead)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamguard.core.scheduler import KeyScheduler


@given(st.lists(st.integers(0, 6), min_size=1, max_size=200), st.integers(1, 8), st.randoms(use_true_random=False))
def test_same_key_never_concurrent_nor_out_of_order_and_concurrency_bounded(keys, concurrency, rnd):
    s: KeyScheduler[int] = KeyScheduler(concurrency, max_buffered=max(concurrency, len(keys)))
    for offset, key in enumerate(keys):
        s.submit(key, offset)
    running: dict[int, int] = {}
    finished: dict[int, list[int]] = {}
    while s.buffered:
        # a finishing task may go on with the next ready item itself (take_one), the rest start as tasks (take)
        one = s.take_one() if rnd.random() < 0.5 else None
        for key, offset in ([one] if one else []) + s.take():
            assert key not in running, "same key ran concurrently"
            running[key] = offset
        assert len(running) <= concurrency
        assert not s.startable and s.take_one() is None
        key = rnd.choice(sorted(running))
        finished.setdefault(key, []).append(running.pop(key))
        s.finish(key)
    for key, offsets in finished.items():
        assert offsets == [o for o, k in enumerate(keys) if k == key]
    assert sum(map(len, finished.values())) == len(keys)


def test_full_when_buffer_reaches_budget_and_drain_keeps_running_heads():
    s: KeyScheduler[int] = KeyScheduler(2, 4)
    for i, k in enumerate("aabc"):
        s.submit(k, i)
    assert s.is_full
    started = s.take()
    assert [k for k, _ in started] == ["a", "b"]
    dropped = s.drain()
    assert sorted(dropped) == [1, 3]
    assert s.buffered == 2 and s.running == 2
    s.finish("a")
    s.finish("b")
    assert s.buffered == 0 and s.take() == []


def test_invalid_budgets_are_rejected():
    with pytest.raises(ValueError, match="concurrency"):
        KeyScheduler(0, 1)
    with pytest.raises(ValueError, match="max_buffered"):
        KeyScheduler(4, 2)
