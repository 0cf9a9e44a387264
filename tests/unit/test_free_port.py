"""Ports for local brokers come from below the kernel's ephemeral range (where outgoing connections take their
local ports, so one could take a broker's port between its pick and its bind), are bindable when handed out,
and are never handed out twice in one process."""

from __future__ import annotations

import socket

import pytest

from streamguard.testing.local_kafka import _ephemeral_range, free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    lo, _ = _ephemeral_range()
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports)
    if lo - 10_000 >= 1_000:
        assert all(10_000 <= p < lo for p in ports), sorted(ports)[:5]
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_someone_listens_on_or_handed_out_before_is_skipped(monkeypatch):
    import streamguard.testing.local_kafka as lk

    if _ephemeral_range()[0] - 10_000 < 1_000:
        pytest.skip("no room below the ephemeral range here: the OS picks")
    given = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            spare = probe.getsockname()[1]
        picks = iter([busy.getsockname()[1], given, spare])  # the picker's random choices, in this order
        monkeypatch.setattr(lk.secrets, "choice", lambda _candidates: next(picks))
        assert free_port() == spare
