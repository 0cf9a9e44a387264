"""Properties of per-partition offset tracking (the core of "no commit past an unresolved message")."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamguard.core.offsets import OffsetTracker, decode_metadata, encode_metadata

offset_sets = st.lists(st.integers(0, 5000), min_size=1, max_size=300, unique=True).map(sorted)


@given(offset_sets, st.randoms(use_true_random=False))
def test_any_completion_order_gives_the_same_final_commit(offsets, rnd):
    t = OffsetTracker()
    for o in offsets:
        t.track(o)
    order = list(offsets)
    rnd.shuffle(order)
    for o in order:
        t.mark_done(o)
    assert t.committable() == offsets[-1] + 1
    assert t.in_flight == 0


@given(offset_sets, st.randoms(use_true_random=False), st.floats(0, 1))
def test_commit_never_passes_an_incomplete_offset(offsets, rnd, fraction):
    t = OffsetTracker()
    for o in offsets:
        t.track(o)
    order = list(offsets)
    rnd.shuffle(order)
    done: set[int] = set()
    for o in order[: int(len(order) * fraction)]:
        t.mark_done(o)
        done.add(o)
        c = t.committable()
        assert c is not None
        incomplete = [x for x in offsets if x not in done]
        if incomplete:
            assert c == min(incomplete)
        else:
            assert c == offsets[-1] + 1
        assert all(x in done for x in offsets if x < c)


@given(offset_sets, st.randoms(use_true_random=False))
def test_restart_from_metadata_skips_exactly_the_resolved_offsets(offsets, rnd):
    t = OffsetTracker()
    for o in offsets:
        t.track(o)
    done = set(rnd.sample(offsets, rnd.randint(0, len(offsets))))
    for o in sorted(done, key=lambda _: rnd.random()):
        t.mark_done(o)
    wm = t.committable()
    assert wm is not None
    skip = decode_metadata(t.metadata(), wm)
    assert skip == {o for o in done if o > wm}
    # a new owner starting at wm re-runs exactly the unresolved offsets
    fresh = OffsetTracker(wm, skip)
    rerun = [o for o in offsets if o >= wm and not fresh.track(o)]
    assert set(rerun) == {o for o in offsets if o not in done}


@given(st.integers(0, 10**12), st.lists(st.integers(1, 10**6), max_size=3000, unique=True), st.integers(40, 4000))
@settings(max_examples=60)
def test_metadata_respects_its_budget_and_decodes_a_prefix(wm, deltas, budget):
    offsets = {wm + d for d in deltas}
    md = encode_metadata(wm, offsets, budget)
    assert len(md.encode()) <= max(budget, len(f"sg1:{wm}:"))
    got = decode_metadata(md, wm)
    assert got <= offsets
    if got:  # a prefix: nothing decoded lies beyond something left out below it
        assert all(o in got for o in offsets if o <= max(got))


def test_overflowing_metadata_degrades_to_a_partial_skip_list_never_a_stall():
    t = OffsetTracker()
    for o in range(0, 20000):
        t.track(o)
    for o in range(1, 20000, 2):  # every other offset done: worst case for runs
        t.mark_done(o)
    md = t.metadata(max_bytes=200)
    assert len(md) <= 200
    assert t.committable() == 0
    t.mark_done(0)
    assert t.committable() == 2


def test_stale_or_foreign_metadata_is_ignored():
    md = encode_metadata(10, {12, 13})
    assert decode_metadata(md, 10) == {12, 13}
    assert decode_metadata(md, 11) == set()
    assert decode_metadata("someone else's", 10) == set()
    assert decode_metadata("sg1:10:!!!", 10) == set()


def test_duplicate_and_unknown_completions_cannot_move_the_commit():
    t = OffsetTracker()
    for o in (5, 6, 7):
        t.track(o)
    t.mark_done(6)
    t.mark_done(6)
    t.mark_done(99)
    t.mark_done(1)
    assert t.committable() == 5
    t.mark_done(5)
    assert t.committable() == 7


@given(offset_sets, st.sets(st.integers(0, 5000), max_size=20), st.randoms(use_true_random=False),
       st.integers(1, 50))
def test_batched_tracking_and_completion_match_one_by_one(offsets, preresolved, rnd, chunk):
    """track_many / mark_done_many (the serial lanes' batch calls) leave the tracker exactly where the
    per-offset calls do, whatever the chunking, preresolved offsets, re-fetches or completion runs."""
    ordered = sorted(offsets)
    start = ordered[0] if ordered else 0
    one, many = OffsetTracker(start, preresolved), OffsetTracker(start, preresolved)
    skipped_one: list[int] = []
    for o in ordered:
        try:
            if one.track(o):
                skipped_one.append(o)
        except ValueError:
            skipped_one.append(o)
    skipped_many: list[int] = []
    for i in range(0, len(ordered), chunk):
        run = ordered[i:i + chunk]
        if rnd.random() < 0.2 and i:  # a re-fetch overlapping what was tracked already
            run = ordered[max(0, i - 3):i + chunk]
        skipped_many += [run[j] for j in many.track_many(run) if run[j] >= ordered[i]]
    assert skipped_many == skipped_one
    live = [o for o in ordered if o not in set(skipped_one)]
    pos = 0
    while pos < len(live):  # complete in runs: in order from the head (the lane) or shuffled
        n = rnd.randint(1, 20)
        run = live[pos:pos + n]
        pos += n
        if rnd.random() < 0.3:
            rnd.shuffle(run)
        for o in run:
            one.mark_done(o)
        many.mark_done_many(run)
        assert many.committable() == one.committable()
        assert many.in_flight == one.in_flight
