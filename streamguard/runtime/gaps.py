"""Consumer-side detection of messages lost *before* Kafka (a producer that dropped a send).

Producers that stamp ``streamguard.seq = "<producer-id>:<n>"`` (see :class:`streamguard.chaos.sequencer.
SequencedProducer`) number their records per partition. A jump from n to n+k+1 means k records never
reached the partition: it is counted in ``streamguard_sequence_gaps_total`` and logged. Repeats (n or less)
are redeliveries and are ignored. State is reset when a partition is (re)assigned, since a new owner may
start mid-stream.
"""

from __future__ import annotations

SEQ_HEADER = "streamguard.seq"


class GapDetector:
    """Last sequence number per (topic, partition, producer)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[str, int, str], int] = {}

    def reset(self, topic: str, partition: int) -> None:
        for k in [k for k in self._last if k[0] == topic and k[1] == partition]:
            del self._last[k]

    def observe(self, topic: str, partition: int, headers: list[tuple[str, bytes]] | None) -> tuple[str, int] | None:
        """Return (producer, missing count) when this record reveals a gap, else None."""
        if not headers:
            return None
        for name, value in headers:
            if name == SEQ_HEADER and value:
                producer, _, n = value.decode("utf-8", "replace").rpartition(":")
                try:
                    seq = int(n)
                except ValueError:
                    return None
                key = (topic, partition, producer)
                last = self._last.get(key)
                if last is None or seq > last:
                    self._last[key] = seq
                if last is not None and seq > last + 1:
                    return producer, seq - last - 1
                return None
        return None
