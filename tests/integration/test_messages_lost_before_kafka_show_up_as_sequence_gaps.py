"""Lost messages upstream: records a producer never delivered show up as sequence gaps (metric + count)."""

from __future__ import annotations

from streamguard import App, Settings
from streamguard.chaos.sequencer import SequencedProducer
from tests.runtime_helpers import running, wait_until


def test_gaps_are_counted(kafka, new_topic):
    topic = new_topic(partitions=2)
    producer = SequencedProducer({"bootstrap.servers": kafka.bootstrap}, partitions=2, producer_id="p1")
    sent = 0
    for i in range(200):
        lost = i in (50, 51, 52, 120)
        producer.produce(topic, f"v{i}".encode(), key=b"same-key", skip=lost)  # one partition: one sequence
        sent += not lost
    assert producer.flush(30) == 0
    app = App(f"gaps-{topic}", kafka.bootstrap, settings=Settings(detect_gaps=True, commit_interval=0.2))
    app.handler(topic)(lambda value: None)
    with running(app) as worker:
        wait_until(lambda: worker.stats["ok"] == sent, 30)
    assert worker.stats["sequence_gaps"] == 4
    samples = {s.labels["partition"]: s.value for m in worker.metrics.registry.collect()
               if m.name == "streamguard_sequence_gaps" for s in m.samples if s.name.endswith("_total")}
    assert sum(samples.values()) == 4
