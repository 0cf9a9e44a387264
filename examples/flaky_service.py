"""A handler in front of a flaky, sometimes slow dependency: timeouts, retries with backoff and jitter,
a circuit breaker that pauses instead of burning retries, and retry topics for long waits.

    STREAMGUARD_BOOTSTRAP=127.0.0.1:9092 streamguard run examples.flaky_service:app

The "service" below is simulated in-process (latency spikes, errors, outages) so the example runs anywhere.
"""

from __future__ import annotations

import asyncio
import os
import random

from streamguard import App, CircuitBreaker, Context, Retry, RetryLater, Settings

TOPIC = os.environ.get("FLAKY_TOPIC", "notifications")


class FlakyService:
    """Answers in ~10 ms, sometimes in 2 s, sometimes with an error; `down` simulates an outage."""

    def __init__(self, error_rate: float = 0.05, spike_rate: float = 0.02, seed: int = 7) -> None:
        self.error_rate, self.spike_rate = error_rate, spike_rate
        self.down = False
        self._rnd = random.Random(seed)

    async def send(self, payload: bytes) -> None:
        if self.down:
            raise ConnectionError("notification service unreachable")
        roll = self._rnd.random()
        if roll < self.spike_rate:
            await asyncio.sleep(2.0)  # the handler's timeout (1 s) turns this into a retryable failure
        elif roll < self.spike_rate + self.error_rate:
            raise ConnectionError("503 from the notification service")
        await asyncio.sleep(0.01)


service = FlakyService()
breaker = CircuitBreaker("notifications", failure_ratio=0.5, window=20, min_calls=10, open_for=5.0,
                         slow_call_seconds=0.5)
app = App("notifier", settings=Settings(commit_interval=1.0))


@app.handler(TOPIC, concurrency=50, timeout=1.0, breakers=[breaker],
             retry=Retry(attempts=6, backoff=(0.2, 10.0), jitter=True, on=(ConnectionError, TimeoutError)),
             retry_topics=(30.0, 300.0))  # after a failure, wait 30 s, then 5 min, outside the worker
async def notify(payload: bytes, ctx: Context) -> None:
    if ctx.header("rate-limited") == b"1":
        raise RetryLater(60.0, "the customer is rate limited")  # handler-chosen delay
    async with breaker.guard():
        await service.send(payload)
