"""Throughput benchmarks for streamguard against a raw confluent-kafka consumer (``python -m benchmarks.run``)."""
