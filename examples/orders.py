"""The orders pipeline: typed messages, a payment dependency behind a circuit breaker, retries with
backoff, a DLQ for orders that can never succeed, quarantine for poison, and idempotent effects.

Run it against any cluster:  STREAMGUARD_BOOTSTRAP=127.0.0.1:9092 streamguard run examples.orders:app
(`make demo` runs it with injected trouble and prints a summary.)
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import msgspec

from streamguard import App, CircuitBreaker, Context, PermanentFailure, Retry, Settings, SqliteStore

TOPIC = os.environ.get("ORDERS_TOPIC", "orders")
STATE = Path(os.environ.get("ORDERS_STATE", "state"))


class Order(msgspec.Struct):
    order_id: str
    customer: str
    amount_cents: int


class PaymentGateway:
    """A flaky dependency: a share of transient errors, and an outage switch for the demo."""

    def __init__(self, transient_rate: float = 0.1) -> None:
        self.transient_rate = transient_rate
        self.down = threading.Event()
        self.refunds_enabled = False  # the "fix" the demo deploys before replaying the DLQ
        self._rnd = random.Random(42)
        self._lock = threading.Lock()

    def charge(self, order: Order) -> None:
        if self.down.is_set():
            raise ConnectionError("payment gateway unreachable")
        with self._lock:
            flaky = self._rnd.random() < self.transient_rate
        if flaky:
            raise TimeoutError("payment gateway timed out")
        if order.amount_cents <= 0 and not self.refunds_enabled:
            raise PermanentFailure(f"order {order.order_id}: amount must be positive")


gateway = PaymentGateway()
payments = CircuitBreaker("payments", failure_ratio=0.6, window=20, min_calls=10, open_for=1.0)
STATE.mkdir(parents=True, exist_ok=True)
store = SqliteStore(STATE / "orders-idempotency.db")

app = App("orders-service", idempotency=store, settings=Settings(commit_interval=0.5))


@app.handler(TOPIC, model=Order, concurrency=32, timeout=5.0, breakers=[payments],
             key=lambda order, ctx: order.order_id,
             retry=Retry(attempts=4, backoff=(0.1, 1.0), on=(TimeoutError, ConnectionError)))
def handle(order: Order, ctx: Context) -> None:
    with payments.guard():
        gateway.charge(order)
    with ctx.transaction() as db:  # the effect and the idempotency mark commit together
        db.execute("CREATE TABLE IF NOT EXISTS charges (order_id TEXT PRIMARY KEY, amount INTEGER)")
        db.execute("INSERT INTO charges VALUES (?, ?)", (order.order_id, order.amount_cents))
