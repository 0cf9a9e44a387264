"""`streamguard dlq ...` and `streamguard quarantine ...` (registered by cli_commands).

Exit codes: 0 done (or nothing to do), 1 declined at the confirmation prompt or interrupted (the position
of what was replayed is committed), 2 a streamguard error (bad arguments, unreachable cluster, missing topic).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from streamguard.core.envelope import HEADER_PREFIX
from streamguard.errors import ConfigError
from streamguard.ops.kafkaio import Cluster, FailureRecord
from streamguard.ops.replay import (
    DLQ_SUFFIX,
    QUARANTINE_SUFFIX,
    Plan,
    execute,
    parse_rate,
    plan_purge,
    plan_replay,
    purge,
    replay_group,
    select,
    summarize,
)
from streamguard.ops.selection import Selection, iso, selection_from_args

MESSAGE_WIDTH = 48
KEY_WIDTH = 24


# -- shared helpers ------------------------------------------------------------------------------------------


def _cluster(args: argparse.Namespace) -> Cluster:
    from streamguard.cli import _bootstrap_from

    config: dict[str, Any] = {"bootstrap.servers": _bootstrap_from(args)}
    for item in args.kafka_config or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"-X {item!r}: expected KEY=VALUE (a librdkafka setting)")
        config[k] = v
    return Cluster(config, timeout=args.timeout)


def _printable(text: str, width: int | None = None) -> str:
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    if width is not None and len(out) > width:
        out = out[: width - 3] + "..."
    return out


def _key_text(key: bytes | None) -> str:
    return "-" if key is None else key.decode("utf-8", "replace")


def _bytes_json(name: str, raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {name: None}
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        import base64

        return {f"{name}_b64": base64.b64encode(raw).decode()}


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _confirm(question: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    print(f"{question} [y/N] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not answer.endswith("\n") or not sys.stdin.isatty():
        print()  # the answer was not echoed (piped, or stdin closed): end the prompt line
    return answer.strip().lower() in ("y", "yes")


def _source_of(rec: FailureRecord) -> str:
    env = rec.envelope
    if env.source_topic is None:
        return "-"
    return f"{env.source_topic}/{env.source_partition if env.source_partition is not None else '?'}/" \
           f"{env.source_offset if env.source_offset is not None else '?'}"


def _record_json(rec: FailureRecord, *, values: bool, stack: bool) -> dict[str, Any]:
    env = rec.envelope
    out: dict[str, Any] = {
        "topic": rec.topic, "partition": rec.partition, "offset": rec.offset, "timestamp_ms": rec.timestamp_ms,
        **_bytes_json("key", rec.key),
        "source_topic": env.source_topic, "source_partition": env.source_partition,
        "source_offset": env.source_offset, "source_timestamp_ms": env.source_timestamp_ms,
        "reason": env.reason, "error_type": env.error_type, "error_message": env.error_message,
        "attempts": env.attempts, "first_failure_ms": env.first_failure_ms, "last_failure_ms": env.last_failure_ms,
        "handler": env.handler, "worker": env.worker_id, "idempotency_key": env.idempotency_key,
        "replayed_from": env.replayed_from,
    }
    if stack:
        out["stack"] = env.stack
    user = [(n, v) for n, v in rec.headers if not n.startswith(HEADER_PREFIX)]
    if values:
        out["headers"] = [{"name": n, **_bytes_json("value", v)} for n, v in user]
        out.update(_bytes_json("value", rec.value))
    else:
        out["headers"] = [n for n, _ in user]
    return out


def _record_row(rec: FailureRecord) -> list[str]:
    env = rec.envelope
    return [f"{rec.partition}:{rec.offset}", iso(rec.timestamp_ms), _source_of(rec), env.error_type or "-",
            _printable(env.error_message or "", MESSAGE_WIDTH),
            "-" if env.attempts is None else str(env.attempts), _printable(_key_text(rec.key), KEY_WIDTH)]


ROW_HEADER = ["OFFSET", "TIME", "SOURCE", "ERROR TYPE", "MESSAGE", "ATT", "KEY"]


# -- list / show ---------------------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    topics = list(args.topics) or cluster.topics(args.suffix)
    if not topics:
        if not args.json:
            print(f"no {args.suffix} topics on {cluster.bootstrap}")
        return 0
    for topic in topics:
        cluster.require_topic(topic)
        s = summarize(cluster, topic)
        if args.json:
            print(json.dumps(s.as_json()), flush=True)
            continue
        span = f", {iso(s.oldest_ms)} .. {iso(s.newest_ms)}" if s.oldest_ms is not None else ""
        print(f"{s.topic}: {s.messages} message(s) in {s.partitions} partition(s){span}")
        if s.read:
            rows = [[t, str(c)] for t, c in s.by_error_type.most_common()]
            print("\n".join("  " + line for line in _table(rows, ["ERROR TYPE", "COUNT"]).splitlines()))
            rows = [[src, str(c)] for src, c in sorted(s.by_source.items())]
            print("\n".join("  " + line for line in _table(rows, ["SOURCE PARTITION", "COUNT"]).splitlines()))
        print()
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    cluster.require_topic(args.topic)
    if args.limit == 0:
        args.limit = None
    selection = selection_from_args(args)
    rows: list[list[str]] = []
    for rec in select(cluster, args.topic, selection, with_values=args.values):
        if args.json:
            print(json.dumps(_record_json(rec, values=args.values, stack=args.stack)), flush=True)
            continue
        rows.append(_record_row(rec))
        if args.values:
            rows.append(["", "", "value:", _printable((rec.value or b"").decode("utf-8", "replace"), 200),
                         "", "", ""])
        if args.stack and rec.envelope.stack:
            rows.extend(["", "", "", "  " + _printable(line), "", "", ""]
                        for line in rec.envelope.stack.splitlines())
    if not args.json:
        print(_table(rows, ROW_HEADER) if rows else f"no matching records in {args.topic} ({selection.describe()})")
        if args.limit is not None and len([r for r in rows if r[0]]) >= args.limit:
            print(f"(first {args.limit}; --limit 0 shows all)")
    return 0


# -- replay / release ----------------------------------------------------------------------------------------


class _Progress:
    """One updating line on stderr: `replayed 40/120 (skipped 3) 38/s`."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False

    def __call__(self, moved: int, total: int, skipped: int, rate: float) -> None:
        now = time.monotonic()
        if moved == 0 and total:
            return  # nothing acknowledged yet
        if moved < total and now - self.last < (0.25 if self.tty else 1.0):
            return
        self.last = now
        line = f"{self.verb} {moved}/{total} (skipped {skipped}) {rate:.1f}/s"
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.shown = True

    def end(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _bare(verb: str) -> str:
    return verb.removesuffix("d") if verb.endswith("sed") else verb.removesuffix("ed")


def _print_plan(plan: Plan, verb: str, selection: Selection) -> None:
    print(f"{plan.source}: {len(plan.selected)} record(s) to {_bare(verb)} "
          f"({selection.describe()}; group {plan.group})")
    for target, n in plan.targets.most_common():
        note = " (does not exist)" if target in plan.missing_targets else ""
        print(f"  -> {target}: {n}{note}")
    _print_skips(plan)


def _print_skips(plan: Plan) -> None:
    print(f"  skipped: {plan.skipped_filter} by filter, {plan.already} already {_done_word(plan)} by this group"
          + (f", {plan.no_target} without streamguard.source.topic (use --to)" if plan.no_target else "")
          + (f", {plan.beyond_limit} beyond --limit" if plan.beyond_limit else ""))


def _done_word(plan: Plan) -> str:
    return "released" if plan.group.startswith("streamguard-release.") else "replayed"


def _run_replay(args: argparse.Namespace, *, release: bool) -> int:
    verb = "released" if release else "replayed"
    cluster = _cluster(args)
    cluster.require_topic(args.topic)
    selection = selection_from_args(args)
    rate = parse_rate(args.rate)
    group = args.group or replay_group(args.topic, args.to, release=release)
    plan = plan_replay(cluster, args.topic, selection, to=args.to, group=group)
    if args.dry_run:
        print(f"dry run: nothing is {verb} and no position is committed")
        _print_plan(plan, verb, selection)
        if plan.selected:
            rows = [[*_record_row(pl.record)[:4], _printable(_key_text(pl.record.key), KEY_WIDTH),
                     f"{pl.target}[{pl.partition if pl.partition is not None else 'by key'}]"]
                    for pl in plan.selected]
            print(_table(rows, ["OFFSET", "TIME", "SOURCE", "ERROR TYPE", "KEY", "TARGET"]))
        if plan.missing_targets and not args.create_target:
            print(f"would refuse: target topic(s) {', '.join(plan.missing_targets)} do not exist (--create-target)")
        return 0
    if not plan.selected:
        print(f"nothing to {_bare(verb)} from {args.topic} ({selection.describe()})")
        _print_skips(plan)
        return 0
    if plan.missing_targets and not args.create_target:
        names = ", ".join(repr(t) for t in plan.missing_targets)
        raise ConfigError(f"target topic {names} does not exist on {cluster.bootstrap}; create it or pass "
                          f"--create-target (nothing was {verb})")
    _print_plan(plan, verb, selection)
    if not _confirm(f"{_bare(verb).capitalize()} {len(plan.selected)} record(s)?", args.yes):
        print(f"aborted: nothing {verb}")
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = _Progress(verb)
    try:
        result = execute(cluster, plan, rate=rate, create_target=args.create_target, stop=stop, progress=progress)
    finally:
        progress.end()
        for s, h in previous.items():
            signal.signal(s, h)
    rate_text = f" ({result.rate:.1f}/s)" if result.moved else ""
    print(f"{verb} {result.moved} of {len(plan.selected)} record(s) from {args.topic} in {result.elapsed:.1f}s"
          f"{rate_text}")
    for target, n in result.by_target.most_common():
        print(f"  -> {target}: {n}")
    _print_skips(plan)
    if result.committed:
        pos = ", ".join(f"partition {p} at offset {o}" + (f" (+{n} {verb} above it)" if n else "")
                        for p, (o, n) in sorted(result.committed.items()))
        print(f"  position committed for group {plan.group}: {pos}")
    if result.passed_over:
        print(f"  note: {result.passed_over} unselected record(s) were passed over to keep the commit metadata "
              f"small; this group will not offer them again (use --group to replay them)")
    if release:
        print("  note: workers give each released record a fresh crash-loop budget once (see docs/operations.md)")
    if result.interrupted:
        print(f"interrupted: {len(plan.selected) - result.moved} record(s) left; run the same command to resume")
        return 1
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    return _run_replay(args, release=False)


def _cmd_release(args: argparse.Namespace) -> int:
    return _run_replay(args, release=True)


# -- purge ---------------------------------------------------------------------------------------------------


def _cmd_purge(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    cluster.require_topic(args.topic)
    selection = selection_from_args(args)
    plan = plan_purge(cluster, args.topic, selection)
    if not plan.total:
        print(f"nothing to purge in {args.topic} ({selection.describe()})")
        return 0
    print(f"{args.topic}: purge {plan.total} record(s) ({selection.describe()}):")
    for p, before in sorted(plan.before.items()):
        print(f"  partition {p}: delete offsets {plan.lows[p]}..{before - 1} ({plan.counts[p]} record(s))")
    if args.dry_run:
        print("dry run: nothing deleted")
        return 0
    if not _confirm(f"Delete {plan.total} record(s) for good?", args.yes):
        print("aborted: nothing deleted")
        return 1
    lows = purge(cluster, plan)
    print(f"purged {plan.total} record(s) from {args.topic}; new low watermark(s): "
          + ", ".join(f"{p}:{o}" for p, o in sorted(lows.items())))
    return 0


# -- parser --------------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="HOST:PORT (default: $STREAMGUARD_BOOTSTRAP or the running `kafka up`)")
    p.add_argument("-X", "--kafka-config", action="append", metavar="KEY=VALUE",
                   help="extra librdkafka setting for every client (security.protocol=..., sasl.*, ssl.*)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the cluster (default 10)")


def _filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (combined with AND; a repeated flag is OR, except --header)")
    g.add_argument("--error-type", action="append", metavar="TYPE",
                   help="streamguard.error.type contains TYPE; =TYPE for an exact match")
    g.add_argument("--key", action="append", help="record key equals KEY (UTF-8)")
    g.add_argument("--since", help="DLQ record timestamp >= this (ISO 8601, UTC unless an offset is given, "
                                   "or epoch ms)")
    g.add_argument("--until", help="DLQ record timestamp < this")
    g.add_argument("--partition", action="append", type=int, metavar="N", help="source partition")
    g.add_argument("--offsets", action="append", metavar="[P:]A-B",
                   help="offsets in the DLQ/quarantine topic, inclusive (A-, A, or P:A-B for one of its partitions)")
    g.add_argument("--header", action="append", metavar="NAME=VALUE", help="the record has this header")


def _add_group(sub: Any, name: str, suffix: str, *, release: bool) -> None:
    kind = "dead-letter" if suffix == DLQ_SUFFIX else "quarantine"
    top = sub.add_parser(name, help=f"inspect, {'release' if release else 'replay'} and purge {kind} topics "
                                    f"(*{suffix})")
    verbs = top.add_subparsers(dest=f"{name}_cmd", required=True)

    ls = verbs.add_parser("list", help=f"{suffix} topics with counts by error type and source partition")
    ls.add_argument("topics", nargs="*", help=f"topics to summarize (default: every *{suffix} topic)")
    ls.add_argument("--json", action="store_true", help="one JSON object per topic")
    _common(ls)
    ls.set_defaults(func=_cmd_list, suffix=suffix)

    show = verbs.add_parser("show", help="records with their decoded streamguard.* headers (values hidden)")
    show.add_argument("topic")
    show.add_argument("--json", action="store_true", help="JSON lines, one record each")
    show.add_argument("--limit", type=int, default=100, help="show at most N records (default 100; 0: all)")
    show.add_argument("--values", action="store_true", help="also print values and user header values (sensitive)")
    show.add_argument("--stack", action="store_true", help="also print the error stack")
    _common(show)
    _filters(show)
    show.set_defaults(func=_cmd_show)

    verb = "release" if release else "replay"
    rp = verbs.add_parser(verb, help=f"{verb} selected records to their source topic (or --to); resumable, "
                                     "idempotent")
    rp.add_argument("topic")
    rp.add_argument("--to", metavar="TOPIC", help="target topic (default: each record's streamguard.source.topic)")
    rp.add_argument("--rate", metavar="N/s", help="at most N records per second (N/s, N/m)")
    rp.add_argument("--limit", type=int, default=None, help="at most N records")
    rp.add_argument("--dry-run", action="store_true", help="print what would move; move and commit nothing")
    rp.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rp.add_argument("--create-target", action="store_true", help="create a missing target topic")
    rp.add_argument("--group", help=f"consumer group keeping the {verb} position (default "
                                    f"streamguard-{verb}.<topic>.<target or 'origin'>)")
    _common(rp)
    _filters(rp)
    rp.set_defaults(func=_cmd_release if release else _cmd_replay)

    pg = verbs.add_parser("purge", help="delete selected records for good (only a prefix of each partition)")
    pg.add_argument("topic")
    pg.add_argument("--limit", type=int, default=None, help="at most N records")
    pg.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    pg.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    _common(pg)
    _filters(pg)
    pg.set_defaults(func=_cmd_purge)


def register_cli(sub: Any) -> None:
    """Add the `dlq` and `quarantine` commands to the top-level sub-parsers ``sub``."""
    _add_group(sub, "dlq", DLQ_SUFFIX, release=False)
    _add_group(sub, "quarantine", QUARANTINE_SUFFIX, release=True)
