"""The handler test kit routes messages the way the worker does, without Kafka or sleeping."""

from __future__ import annotations

import msgspec

from streamguard import App, PermanentFailure, Quarantine, Retry
from streamguard.testing.handler_kit import run_handler


class Order(msgspec.Struct):
    order_id: str
    amount: int


def make_app() -> tuple[App, list[str]]:
    app = App("kit", "127.0.0.1:1")
    calls: list[str] = []

    @app.handler("orders", model=Order, retry=Retry(attempts=3, backoff=(0.5, 4.0), jitter=False),
                 max_message_bytes=200)
    async def handle(order: Order, ctx) -> None:
        calls.append(order.order_id)
        if order.amount < 0:
            raise PermanentFailure("negative")
        if order.amount == 0:
            raise Quarantine("needs a person")
        if order.order_id == "flaky" and ctx.attempt < 3:
            raise ConnectionError("later")
        if order.order_id == "down":
            raise ConnectionError("always")

    return app, calls


def test_routing_matches_the_worker():
    app, calls = make_app()
    assert run_handler(app, "orders", Order("o1", 5)).outcome == "ok"
    flaky = run_handler(app, "orders", Order("flaky", 5))
    assert (flaky.outcome, flaky.attempts, flaky.retry_delays) == ("ok", 3, [0.5, 1.0])
    down = run_handler(app, "orders", Order("down", 5))
    assert (down.outcome, down.attempts, down.destination) == ("dead-letter", 3, "orders.dlq")
    assert run_handler(app, "orders", Order("n", -1)).outcome == "dead-letter"
    assert run_handler(app, "orders", Order("q", 0)).destination == "orders.quarantine"
    bad = run_handler(app, "orders", b"\xffnope")
    assert (bad.outcome, bad.attempts) == ("quarantine", 0)
    big = run_handler(app, "orders", Order("x" * 500, 1))
    assert (big.outcome, big.attempts) == ("quarantine", 0)
    assert "x" * 500 not in calls
