"""Pick the Kafka that tests and demos run against.

Order: ``STREAMGUARD_BOOTSTRAP`` (an existing cluster) > the local launcher (default) > testcontainers'
Kafka container when ``STREAMGUARD_KAFKA=docker``.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from streamguard.errors import KafkaUnavailable
from streamguard.testing.local_kafka import LocalKafkaCluster


class KafkaBackend(Protocol):
    """What tests need of a cluster: where it is and how to let it go."""

    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...


class ExternalKafka:
    """A cluster somebody else runs; streamguard never stops it."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self.nodes: list[Any] = []

    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    def stop(self) -> None:
        return None


class DockerKafka:
    """testcontainers' Kafka container, for machines that run a Docker engine."""

    def __init__(self) -> None:
        try:
            from testcontainers.kafka import KafkaContainer
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise KafkaUnavailable("STREAMGUARD_KAFKA=docker needs `pip install streamguard[docker]`") from exc
        self._container = KafkaContainer().with_kraft()
        self._container.start()
        self.nodes: list[Any] = []

    @property
    def bootstrap(self) -> str:
        return str(self._container.get_bootstrap_server())

    def stop(self) -> None:
        self._container.stop()


def kafka_backend(nodes: int = 1) -> KafkaBackend:
    """Start (or attach to) a Kafka with ``nodes`` nodes, following the backend order above."""
    external = os.environ.get("STREAMGUARD_BOOTSTRAP")
    if external:
        return ExternalKafka(external)
    if os.environ.get("STREAMGUARD_KAFKA", "local") == "docker":
        if nodes != 1:
            raise KafkaUnavailable("the Docker backend runs a single node; fault tests need the local launcher")
        return DockerKafka()
    return LocalKafkaCluster(nodes).start()
