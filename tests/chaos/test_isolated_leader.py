"""The "isolated partition leader" fault is real: a broker cut off from its peers (replication, KRaft quorum and
heartbeats all pass per-pair peer proxies, see ``LocalKafkaCluster(peer_proxy_for=...)``) loses its partition
leadership or its place in the ISR, while it still answers clients on its own listener; after the heal the ISR
is full again.

Metadata is read with one raw Metadata request to one chosen broker (``node_metadata``): a Kafka client would
ask whichever broker it likes, and the isolated one keeps serving its stale view.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streamguard.chaos.harness import ChaosCluster, IsolationMode
from streamguard.testing.local_kafka import LocalKafkaCluster, NodeMetadata, PartitionView, node_metadata

pytestmark = pytest.mark.timeout(180)

T = TypeVar("T")


def _poll(fn: Callable[[], T | None], seconds: float, interval: float = 0.5) -> tuple[T | None, float]:
    """Call ``fn`` until it returns something truthy (errors count as "not yet"); (result, seconds taken)."""
    t0 = time.monotonic()
    while True:
        try:
            result = fn()
        except OSError:
            result = None
        if result or time.monotonic() - t0 >= seconds:
            return result, time.monotonic() - t0
        time.sleep(interval)


def _partition(view: NodeMetadata, topic: str) -> PartitionView:
    return view.topics[topic][0]


def test_peer_proxy_plan_and_unchanged_default(tmp_path: Path) -> None:
    """No broker: the hook sees every ordered pair and listener, hosts files and properties name the peers; a
    cluster without the hook keeps 127.0.0.1 everywhere and no hosts file."""
    calls: list[tuple[int, int, str, tuple[str, int], tuple[str, int]]] = []
    c = LocalKafkaCluster(3, workdir=tmp_path / "p", peer_proxy_for=lambda *a: calls.append(a))
    assert len(calls) == 12 and {(s, d, lst) for s, d, lst, _, _ in calls} == {
        (s, d, lst) for s in (1, 2, 3) for d in (1, 2, 3) if s != d for lst in ("internal", "controller")}
    for src, dst, lst, listen, upstream in calls:
        port = c.node(dst).internal_port if lst == "internal" else c.node(dst).controller_port
        assert listen == (f"127.0.{src}.{dst}", port) and upstream == ("127.0.0.1", port)
    hosts = c._hosts(c.node(2))
    assert "127.0.0.1 sg-node-2.internal sg-node-2.controller" in hosts
    assert "127.0.2.1 sg-node-1.internal sg-node-1.controller" in hosts and "127.0.0.1 localhost" in hosts
    props = c._properties(c.node(2))
    assert f"1@sg-node-1.controller:{c.node(1).controller_port}" in props
    assert f"INTERNAL://sg-node-2.internal:{c.node(2).internal_port}" in props
    assert f"CONTROLLER://sg-node-2.controller:{c.node(2).controller_port}" in props

    plain = LocalKafkaCluster(3, workdir=tmp_path / "d")
    props = plain._properties(plain.node(2))
    assert "sg-node" not in props and f"1@127.0.0.1:{plain.node(1).controller_port}" in props
    assert f"advertised.listeners=INTERNAL://127.0.0.1:{plain.node(2).internal_port},CLIENT://" in props


@pytest.mark.chaos
@pytest.mark.cluster
def test_isolated_leader_is_replaced_still_serves_clients_and_rejoins() -> None:
    """Black hole first, then peer proxies down, each time on the leader of partition 0 then."""
    t_begin = time.monotonic()
    topic = f"iso-{uuid.uuid4().hex[:6]}"
    with ChaosCluster() as cc:
        assert len(cc.peer_proxies) == 12
        cc.create_topic(topic, 1)
        producer = Producer({"bootstrap.servers": cc.bootstrap, "acks": "all", "log_level": 0})
        for i in range(200):
            producer.produce(topic, value=b"%d" % i)
        assert producer.flush(30) == 0
        address = {n.node_id: n.address for n in cc.cluster.nodes}
        modes: tuple[IsolationMode, ...] = ("timeout", "down")  # black hole, then peer proxies down (refused)
        for mode in modes:
            _isolate_and_heal(cc, topic, address, mode)
    print(f"test took {time.monotonic() - t_begin:.1f}s")


def _isolate_and_heal(cc: ChaosCluster, topic: str, address: dict[int, str], mode: IsolationMode) -> None:
    def full_isr_leader() -> int | None:
        pv = _partition(node_metadata(address[1], [topic]), topic)
        return pv.leader if pv.leader >= 0 and len(pv.isr) == 3 else None

    leader, _ = _poll(full_isr_leader, 30)
    assert leader is not None, "partition 0 never had a leader with a full ISR"
    witness = min(n for n in address if n != leader)
    # replication really passes the peer proxies: followers fetched from the leader through them
    before = {key: proxy.statistics() for key, proxy in cc.peer_proxies_of(leader)}
    assert sum(s.bytes_down for (src, _, lst), s in before.items() if lst == "internal" and src != leader) > 0

    cc.isolate(leader, mode)
    try:
        # (a) a node that is not isolated sees a new leader, or the isolated node out of the ISR
        def moved_on() -> PartitionView | None:
            pv = _partition(node_metadata(address[witness], [topic]), topic)
            return pv if pv.leader != leader or leader not in pv.isr else None

        moved, took = _poll(moved_on, 30)
        assert moved is not None, (f"broker {leader} isolated ({mode}) 30 s, yet broker {witness} still sees it as "
                                   f"leader in the ISR: {_partition(node_metadata(address[witness], [topic]), topic)}")
        # (b) the isolated broker still answers clients on its own listener
        stale = node_metadata(address[leader], [topic], timeout=10)
        # ... with the view it had when it was cut off: it never heard of its replacement (no path around the cut)
        assert leader in stale.brokers and _partition(stale, topic).leader == leader, stale
        admin = AdminClient({"bootstrap.servers": address[leader], "log_level": 0})
        assert topic in admin.list_topics(timeout=10).topics
        print(f"\n{mode}: isolated broker {leader}; broker {witness} saw {moved} after {took:.1f}s; "
              f"the isolated broker's own view: {_partition(stale, topic)}")
    finally:
        cc.unisolate(leader)

    # (c) after the heal, every node sees a full ISR again
    t_heal = time.monotonic()
    assert cc.wait_in_sync([topic], 60, every_node=True), [
        _partition(node_metadata(a, [topic]), topic) for a in address.values()]
    print(f"{mode}: ISR full again {time.monotonic() - t_heal:.1f}s after the heal")
    after = {key: proxy.statistics() for key, proxy in cc.peer_proxies_of(leader)}
    assert any(after[key].connections_total > before[key].connections_total for key in after), \
        "no new peer connection after the heal"
