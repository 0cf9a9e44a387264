"""Unit-test a handler without Kafka: the same decoding, Context, retry decisions and failure routing the
worker applies, run in-process with no sleeping (backoff delays are recorded, not waited).

This is for fast handler tests only; it proves nothing about offsets, rebalances or brokers — the
integration tests against real Kafka do that.

    result = run_handler(app, "orders", Order(order_id="o1", amount_cents=5))
    assert result.outcome == "ok"
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from streamguard.app import App
from streamguard.context import Context
from streamguard.core.retry import GiveUp
from streamguard.errors import ConfigError, DecodeError, MessageTooLarge, PermanentFailure, Quarantine
from streamguard.runtime.worker import DEFAULT_RETRY

Outcome = Literal["ok", "dead-letter", "quarantine"]


@dataclass
class HandlerResult:
    """What the worker would have done with the message."""

    outcome: Outcome
    attempts: int
    error: BaseException | None = None
    retry_delays: list[float] = field(default_factory=list)
    destination: str | None = None  # the DLQ or quarantine topic, when not "ok"


def _encode(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return msgspec.json.encode(value)


def run_handler(app: App, topic: str, value: Any, *, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None, partition: int = 0, offset: int = 0,
                timestamp_ms: int | None = None) -> HandlerResult:
    """Handle one message with ``app``'s handler for ``topic`` and report the outcome."""
    spec = app.handlers.get(topic)
    if spec is None:
        raise ConfigError(f"app {app.name!r} has no handler for topic {topic!r}")
    raw = _encode(value)
    size = len(raw or b"") + len(key or b"")
    if spec.max_message_bytes is not None and size > spec.max_message_bytes:
        return HandlerResult("quarantine", 0, MessageTooLarge(f"{size} bytes"), destination=spec.quarantine)
    try:
        model = spec.decoder(raw)
    except DecodeError as exc:
        return HandlerResult("quarantine", 0, exc, destination=spec.quarantine)
    policy = spec.retry or DEFAULT_RETRY
    delays: list[float] = []
    attempt = 0
    clock = 0.0
    while True:
        attempt += 1
        ctx = Context(topic, partition, offset, key, headers, timestamp_ms, attempt, f"{topic}/{partition}/{offset}",
                      "test-worker", None)
        if spec.key is not None:
            ctx.idempotency_key = str(spec.key(model, ctx))
        args = (model, ctx) if spec.takes_ctx else (model,)
        try:
            result = spec.fn(*args)
            if inspect.isawaitable(result):
                asyncio.run(_await(result))
            return HandlerResult("ok", attempt, retry_delays=delays)
        except Exception as exc:
            if isinstance(exc, Quarantine):
                return HandlerResult("quarantine", attempt, exc, delays, spec.quarantine)
            decision = policy.decide(exc, attempt, 0.0, clock)
            if isinstance(decision, GiveUp) or isinstance(exc, PermanentFailure):
                return HandlerResult("dead-letter", attempt, exc, delays, spec.dlq)
            delays.append(decision.delay)
            clock += decision.delay


async def _await(awaitable: Any) -> None:
    await awaitable
