"""The ``streamguard`` command: the composition root that wires the pieces for people at a terminal."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from streamguard.errors import StreamguardError


def _state_file() -> Path:
    from streamguard.testing.distribution import cache_root

    return cache_root() / "up.json"


def _cmd_kafka_up(args: argparse.Namespace) -> int:
    from streamguard.testing.local_kafka import LocalKafkaCluster

    started = time.monotonic()
    print(f"starting a local Apache Kafka ({args.nodes} node(s)) ...", flush=True)
    cluster = LocalKafkaCluster(args.nodes)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with cluster:
        state = {"bootstrap": cluster.bootstrap, "pid": os.getpid(), "workdir": str(cluster.workdir),
                 "nodes": [{"id": n.node_id, "client": n.client_port, "controller": n.controller_port,
                            "internal": n.internal_port, "pid": n.pid, "log": str(n.log_file)} for n in cluster.nodes]}
        _state_file().parent.mkdir(parents=True, exist_ok=True)
        _state_file().write_text(json.dumps(state))
        print(f"ready in {time.monotonic() - started:.1f}s", flush=True)
        print(f"bootstrap: {cluster.bootstrap}", flush=True)
        print("Ctrl-C stops it.", flush=True)
        while not stop:
            time.sleep(0.2)
            dead = [n.node_id for n in cluster.nodes if not n.is_running() and not n._paused]
            if dead:
                print(f"node(s) {dead} exited; see their logs under {cluster.workdir}", file=sys.stderr)
                break
        print("stopping ...", flush=True)
    _state_file().unlink(missing_ok=True)
    return 0


def _bootstrap_from(args: argparse.Namespace) -> str:
    if getattr(args, "bootstrap", None):
        return str(args.bootstrap)
    if os.environ.get("STREAMGUARD_BOOTSTRAP"):
        return os.environ["STREAMGUARD_BOOTSTRAP"]
    if _state_file().exists():
        return str(json.loads(_state_file().read_text())["bootstrap"])
    raise StreamguardError(
        "no cluster named: pass --bootstrap, set STREAMGUARD_BOOTSTRAP or run `streamguard kafka up`")


def _cmd_kafka_status(args: argparse.Namespace) -> int:
    from confluent_kafka.admin import AdminClient

    bootstrap = _bootstrap_from(args)
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        md = admin.list_topics(timeout=args.timeout)
    except Exception as exc:
        print(f"cluster at {bootstrap} is unreachable: {exc}", file=sys.stderr)
        return 2
    print(f"cluster {md.cluster_id} at {bootstrap}: controller {md.controller_id}")
    for b in sorted(md.brokers.values(), key=lambda b: b.id):
        print(f"  broker {b.id}  {b.host}:{b.port}")
    topics = sorted(t for t in md.topics if not t.startswith("__"))
    print(f"  {len(topics)} topic(s)")
    for t in topics:
        print(f"    {t}  partitions={len(md.topics[t].partitions)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamguard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="run and inspect a local Apache Kafka").add_subparsers(dest="kafka_cmd",
                                                                                                  required=True)
    up = kafka.add_parser("up", help="start a local cluster in the foreground (Ctrl-C stops it)")
    up.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    up.set_defaults(func=_cmd_kafka_up)
    status = kafka.add_parser("status", help="show brokers and topics of a cluster")
    status.add_argument("--bootstrap")
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=_cmd_kafka_status)

    from streamguard import cli_commands

    cli_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StreamguardError as exc:
        print(f"streamguard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
