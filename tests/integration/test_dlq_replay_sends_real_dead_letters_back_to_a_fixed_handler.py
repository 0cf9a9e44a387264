"""Ops, end to end: a real worker dead-letters the messages its handler cannot process; after the handler is
fixed, `streamguard dlq replay` (the real CLI) sends exactly those messages back to their source partitions
and the running worker processes them, seeing streamguard.replayed-from."""

from __future__ import annotations

import json
import threading

from streamguard import App, Settings
from streamguard.errors import PermanentFailure
from tests.cli_helpers import run_cli
from tests.kafka_helpers import produce_all
from tests.runtime_helpers import running, wait_until


class SkuUnknown(Exception):
    pass


def test_dead_letters_replayed_to_the_fixed_handler(kafka, new_topic):
    topic = new_topic(partitions=2)
    records = [(f"k{i}".encode(), (b"bad-%d" if i % 5 == 0 else b"ok-%d") % i) for i in range(20)]
    acked = produce_all(kafka.bootstrap, topic, records)
    bad = {value: acked[i] for i, (_, value) in enumerate(records) if value.startswith(b"bad")}
    fixed = threading.Event()
    lock = threading.Lock()
    handled: dict[bytes, list[tuple[int, bytes | None]]] = {}
    app = App(f"replay-e2e-{topic}", kafka.bootstrap, settings=Settings(commit_interval=0.2))

    @app.handler(topic)
    def handle(value: bytes, ctx) -> None:
        if value.startswith(b"bad") and not fixed.is_set():
            raise PermanentFailure("sku unknown") from SkuUnknown(value.decode())
        with lock:
            handled.setdefault(value, []).append((ctx.partition, ctx.header("streamguard.replayed-from")))

    with running(app) as worker:
        wait_until(lambda: worker.stats["dead_lettered"] == len(bad) and len(handled) == 20 - len(bad), 60,
                   what="dead letters and the good messages")
        res = run_cli(kafka.bootstrap, "dlq", "list", f"{topic}.dlq", "--json")
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        assert summary["messages"] == len(bad)
        assert list(summary["by_error_type"]) == [f"{__name__}.SkuUnknown"], summary

        fixed.set()
        res = run_cli(kafka.bootstrap, "dlq", "replay", f"{topic}.dlq", "--error-type", "SkuUnknown", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"replayed {len(bad)} of {len(bad)}" in res.stdout, res.stdout
        wait_until(lambda: len(handled) == 20, 60, what="the replayed messages")
        assert worker.stats["dead_lettered"] == len(bad), "a replayed message failed again"

    for value, (partition, _offset) in bad.items():
        [(got_partition, replayed_from)] = handled[value]
        assert got_partition == partition, "replayed to its source partition"
        assert replayed_from is not None and replayed_from.decode().startswith(f"{topic}.dlq/")
    assert all(handled[v] == [(handled[v][0][0], None)] for v in handled if v not in bad), "good ones ran once"
