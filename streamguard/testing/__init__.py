"""The public test kit: a real local Apache Kafka, backends, and the pytest plugin."""

from streamguard.testing.backends import KafkaBackend, kafka_backend
from streamguard.testing.distribution import KAFKA_VERSION, ensure_kafka_libs
from streamguard.testing.local_kafka import KafkaNode, LocalKafkaCluster

__all__ = ["KAFKA_VERSION", "KafkaBackend", "KafkaNode", "LocalKafkaCluster", "ensure_kafka_libs", "kafka_backend"]
