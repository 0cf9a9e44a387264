"""pytest plugin (entry point ``pytest11``): real-Kafka fixtures for streamguard's tests and yours.

Fixtures:
- ``kafka``: a session-wide 1-node cluster (or ``STREAMGUARD_BOOTSTRAP`` / Docker, see ``kafka_backend``).
- ``kafka_cluster``: a session-wide 3-node local cluster for fault tests; healed after every test.
- ``new_topic``: a factory making fresh, uniquely named topics: ``new_topic(partitions=3)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamguard.testing.backends import KafkaBackend, kafka_backend
from streamguard.testing.local_kafka import LocalKafkaCluster


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBackend]:
    backend = kafka_backend(1)
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def _kafka_cluster_session() -> Iterator[LocalKafkaCluster]:
    cluster = LocalKafkaCluster(3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kafka_cluster(_kafka_cluster_session: LocalKafkaCluster) -> Iterator[LocalKafkaCluster]:
    _kafka_cluster_session.heal()
    yield _kafka_cluster_session
    _kafka_cluster_session.heal()


def create_topic(bootstrap: str, name: str, partitions: int = 1, replication: int = -1,
                 config: dict[str, str] | None = None, timeout: float = 30.0) -> str:
    """Create ``name`` and wait until its metadata shows every partition with a leader."""
    import time

    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(name, partitions, replication, config=config or {})],
                              operation_timeout=timeout)[name]
    fut.result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5).topics.get(name)
        if md and md.error is None and len(md.partitions) == partitions and \
                all(p.leader >= 0 for p in md.partitions.values()):
            return name
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} has no leaders after {timeout}s")


@pytest.fixture
def new_topic(request: pytest.FixtureRequest) -> Callable[..., str]:
    def make(partitions: int = 1, *, bootstrap: str | None = None, prefix: str = "t",
             replication: int = -1, config: dict[str, str] | None = None) -> str:
        if bootstrap is None:
            bootstrap = request.getfixturevalue("kafka").bootstrap
        name = f"{prefix}-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
        return create_topic(bootstrap, name, partitions, replication, config)

    return make


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "kafka: uses a real Kafka broker")


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """Fail the run if any broker JVM started by this process is still alive after fixture teardown."""
    from streamguard.testing.local_kafka import _LIVE

    leftovers = [n.pid for c in list(_LIVE) for n in c.nodes if n.is_running()]
    if leftovers:
        session.config.get_terminal_writer().line(f"streamguard: broker JVMs left running: {leftovers}", red=True)
        session.exitstatus = 1
