"""Per-partition offset tracking: out-of-order completion, a safe commit point, and commit metadata.

Messages of a partition complete in any order (different keys run concurrently). The commit point is
the lowest offset that is not yet resolved; committing it can never skip a message that has not been
handled, dead-lettered or quarantined. Offsets already resolved *above* that point are encoded into the
commit's metadata (bounded, default <= 4000 bytes) so that a restart or a new owner skips them instead
of running them again. When the budget is exceeded only a prefix of those offsets is encoded: the rest
are replayed (the idempotency store catches them), nothing stalls and nothing is lost.

All operations are amortised O(1) per message: offsets arrive in increasing order into a deque; the
watermark advances by popping resolved heads.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterable
from itertools import islice
from operator import lt

METADATA_PREFIX = "sg1"
DEFAULT_METADATA_BYTES = 4000


def _varint(n: int, out: bytearray) -> None:
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _read_varints(data: bytes) -> list[int]:
    values: list[int] = []
    n = shift = 0
    for b in data:
        n |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")
        else:
            values.append(n)
            n = shift = 0
    if shift:
        raise ValueError("truncated varint")
    return values


def _runs(offsets: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct offsets -> (start, length) runs."""
    runs: list[tuple[int, int]] = []
    for o in offsets:
        if runs and runs[-1][0] + runs[-1][1] == o:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((o, 1))
    return runs


def encode_metadata(watermark: int, resolved_above: Iterable[int], max_bytes: int = DEFAULT_METADATA_BYTES) -> str:
    """Encode resolved offsets above ``watermark`` as ``sg1:<watermark>:<base64 varint runs>``, at most ``max_bytes``.

    Runs are (gap from the previous run's end, length). If the whole set does not fit, the longest prefix
    that fits is kept: the offsets left out are simply replayed later.
    """
    offsets = sorted(o for o in set(resolved_above) if o > watermark)
    head = f"{METADATA_PREFIX}:{watermark}:"
    if not offsets:
        return head
    budget = max(0, (max_bytes - len(head)) // 4 * 3)  # base64: every 3 bytes (padded) become 4
    buf = bytearray()
    prev_end = watermark
    for start, length in _runs(offsets):
        piece = bytearray()
        _varint(start - prev_end, piece)
        _varint(length, piece)
        if len(buf) + len(piece) > budget:
            break
        buf += piece
        prev_end = start + length
    return head + base64.b64encode(bytes(buf)).decode()


def decode_metadata(metadata: str | None, committed: int) -> set[int]:
    """Offsets that were resolved above ``committed``; empty when the metadata is absent, foreign or stale."""
    if not metadata or not metadata.startswith(METADATA_PREFIX + ":"):
        return set()
    try:
        _, wm, payload = metadata.split(":", 2)
        if int(wm) != committed:
            return set()  # written for another commit point: trust only the offset
        values = _read_varints(base64.b64decode(payload, validate=True)) if payload else []
    except (ValueError, TypeError):
        return set()
    if len(values) % 2:
        return set()
    out: set[int] = set()
    pos = committed
    for i in range(0, len(values), 2):
        start = pos + values[i]
        out.update(range(start, start + values[i + 1]))
        pos = start + values[i + 1]
    return out


class OffsetTracker:
    """Tracks one partition's in-flight offsets and computes the safe commit point.

    ``start`` is where consumption begins (the committed offset); ``preresolved`` are offsets known to be
    resolved already (decoded from commit metadata), which :meth:`track` reports so the caller skips them.
    """

    __slots__ = ("_done", "_last", "_pending", "_preresolved", "_watermark")

    def __init__(self, start: int | None = None, preresolved: Iterable[int] = ()) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._preresolved: set[int] = set(preresolved)
        self._watermark: int | None = start
        self._last: int | None = None

    def track(self, offset: int) -> bool:
        """Register a fetched offset; return True if it was already resolved (skip it, do not run it)."""
        if self._last is not None and offset <= self._last:
            raise ValueError(f"offset {offset} tracked after {self._last}: offsets must increase")
        self._last = offset
        if self._watermark is None:
            self._watermark = offset
        if self._preresolved and offset in self._preresolved:
            self._preresolved.discard(offset)
            if not self._pending:
                self._watermark = offset + 1
            else:
                self._pending.append(offset)
                self._done.add(offset)
            return True
        self._pending.append(offset)
        return False

    def track_many(self, offsets: list[int]) -> list[int]:
        """:meth:`track` for a fetched run of one partition; returns the indexes to skip (already resolved,
        or not above the last tracked offset: a re-fetch). The common case -- increasing offsets above
        everything tracked, nothing preresolved -- is one ``extend``."""
        if not offsets:
            return []
        last = self._last
        if (self._preresolved or (last is not None and offsets[0] <= last)
                or not all(map(lt, offsets, islice(offsets, 1, None)))):
            skipped = []
            for i, offset in enumerate(offsets):
                try:
                    if self.track(offset):
                        skipped.append(i)
                except ValueError:
                    skipped.append(i)
            return skipped
        if self._watermark is None:
            self._watermark = offsets[0]
        self._pending.extend(offsets)
        self._last = offsets[-1]
        return []

    def mark_done_many(self, offsets: list[int]) -> None:
        """:meth:`mark_done` for each of ``offsets``; when they are exactly the oldest pending ones (a serial
        lane finishing its batch) the head is dropped in one go."""
        if not (offsets and self.mark_done_head(len(offsets), offsets[0], offsets[-1])):
            for offset in offsets:
                self.mark_done(offset)

    def mark_done_head(self, n: int, first: int, last: int) -> bool:
        """Resolve the ``n`` oldest pending offsets, given that they run from ``first`` to ``last``; returns
        False (and changes nothing) unless that is exactly the head with nothing resolved out of order.

        Pending offsets increase, so ``pending[0] == first`` and ``pending[n - 1] == last`` identify the run
        without listing it: the serial lane resolves its batch in O(1) Python work.
        """
        pending = self._pending
        if self._done or n < 1 or len(pending) < n or pending[0] != first or pending[n - 1] != last:
            return False
        if n == len(pending):
            pending.clear()
        else:
            for _ in range(n):
                pending.popleft()
        self._watermark = pending[0] if pending else last + 1 if self._last is None else self._last + 1
        return True

    def mark_done(self, offset: int) -> None:
        """Record that ``offset`` is resolved; advance the watermark past any resolved head.

        Offsets never tracked (or already behind the watermark) are ignored, so a duplicate or late
        completion can never move the commit point.
        """
        pending = self._pending
        if not pending or offset < pending[0] or offset > pending[-1]:
            return
        if pending[0] == offset:
            pending.popleft()
            done = self._done
            while pending and pending[0] in done:
                done.discard(pending.popleft())
            self._watermark = pending[0] if pending else offset + 1 if self._last is None else self._last + 1
        else:
            self._done.add(offset)

    def committable(self) -> int | None:
        """The offset to commit: the lowest unresolved offset (``None`` before anything is known)."""
        return self._watermark

    @property
    def in_flight(self) -> int:
        """Tracked offsets not yet resolved."""
        return len(self._pending) - len(self._done)

    def resolved_above(self) -> set[int]:
        """Resolved offsets above the commit point, including preresolved ones not fetched again yet."""
        wm = self._watermark if self._watermark is not None else -1
        return self._done | {o for o in self._preresolved if o > wm}

    def metadata(self, max_bytes: int = DEFAULT_METADATA_BYTES) -> str:
        """Commit metadata for :meth:`committable` (see :func:`encode_metadata`)."""
        wm = self._watermark
        if wm is None:
            return ""
        return encode_metadata(wm, self.resolved_above(), max_bytes)
