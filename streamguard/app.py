"""The application object people write against: ``App`` and its ``@app.handler`` decorator.

An ``App`` only *describes* the service (handlers, settings); :meth:`App.run` hands it to a
:class:`~streamguard.runtime.worker.Worker` which does the consuming. Everything that can be checked
without a broker (handler signatures, option values) is checked when the handler is registered.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from streamguard.codec import Decoder, make_decoder
from streamguard.errors import ConfigError, HandlerSignatureError

if TYPE_CHECKING:
    from streamguard.context import Context
    from streamguard.core.breaker import CircuitBreaker
    from streamguard.core.idempotency import IdempotencyStore
    from streamguard.core.retry import Retry

KeyFn = Callable[[Any, "Context"], str]
OrderFn = Callable[[Any], Any]


@dataclass
class HandlerSpec:
    """Everything the runtime needs to know about one handler."""

    topic: str
    fn: Callable[..., Any]
    name: str
    decoder: Decoder
    is_async: bool
    takes_ctx: bool
    concurrency: int
    max_buffered: int
    timeout: float | None
    ordering: Literal["key", "partition"] | Callable[[Any], Any]
    key: KeyFn | None
    retry: Retry | None
    dlq: str
    quarantine: str
    max_deliveries: int | None
    max_message_bytes: int | None
    breakers: tuple[CircuitBreaker, ...]
    on_open: Literal["pause", "fallback"]
    fallback: Callable[..., Any] | None
    retry_topics: tuple[float, ...] = ()
    retry_of: str | None = None  # set on the derived spec that consumes `<topic>.retry.<n>`
    retry_level: int = 0

    def retry_topic(self, level: int) -> str:
        """The name of retry topic ``level`` (1-based) of this handler's source topic."""
        return f"{self.retry_of or self.topic}.retry.{level}"


@dataclass
class Settings:
    """Worker settings (defaults chosen for safety; every one can be overridden)."""

    commit_interval: float = 1.0
    poll_batch: int = 2000
    poll_timeout: float = 0.1
    revoke_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    startup_timeout: float = 30.0
    max_inflight_total: int = 60_000
    max_inflight_bytes: int = 64 * 1024 * 1024
    sync_threads: int = 32
    metadata_max_bytes: int = 4000
    lease_seconds: float = 30.0
    auto_offset_reset: str = "earliest"
    create_failure_topics: bool = True
    failure_topic_replication: int = -1
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    log_values: bool = False
    detect_gaps: bool = False
    idempotency_retention: float = 7 * 86400.0  # completed keys older than this are deleted (hourly sweep)
    stuck_after: float = 60.0
    kafka: dict[str, Any] = field(default_factory=dict)


def _accepts(fn: Callable[..., Any]) -> bool:
    """True if ``fn`` takes (message, ctx), False if (message); raise if neither."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise HandlerSignatureError(f"cannot inspect handler {fn!r}: {exc}") from exc
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params if p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if varargs or len(params) >= 2:
        if len(required) > 2:
            raise HandlerSignatureError(f"handler {fn.__qualname__} must take (message, ctx); it requires "
                                        f"{len(required)} arguments")
        return True
    if len(params) == 1:
        return False
    raise HandlerSignatureError(f"handler {fn.__qualname__} must take (message) or (message, ctx)")


class App:
    """A streamguard service: a consumer group and its handlers."""

    def __init__(self, name: str, brokers: str | None = None, *, group_id: str | None = None,
                 idempotency: IdempotencyStore | None = None, settings: Settings | None = None,
                 kafka: Mapping[str, Any] | None = None, worker_id: str | None = None) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError("App name must be a non-empty string (it is the default consumer group id)")
        self.name = name
        self.brokers = brokers or os.environ.get("STREAMGUARD_BOOTSTRAP") or "127.0.0.1:9092"
        self.group_id = group_id or name
        self.idempotency = idempotency
        self.settings = settings or Settings()
        if kafka:
            self.settings.kafka.update(kafka)
        self.worker_id = worker_id
        self.handlers: dict[str, HandlerSpec] = {}

    def handler(self, topic: str, *, model: Any = None, codec: Literal["json", "msgpack"] = "json",
                concurrency: int = 64, max_buffered: int | None = None, timeout: float | None = 30.0,
                ordering: Literal["key", "partition"] | Callable[[Any], Any] = "key",
                key: KeyFn | None = None, retry: Retry | None = None, dlq: str | None = None,
                quarantine: str | None = None, max_deliveries: int | None = 3,
                max_message_bytes: int | None = None, breakers: tuple[CircuitBreaker, ...] | list[Any] = (),
                on_open: Literal["pause", "fallback"] = "pause", fallback: Callable[..., Any] | None = None,
                retry_topics: tuple[float, ...] | list[float] = (),
                name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the handler of ``topic``.

        ``ordering``: "key" (same Kafka key in offset order, different keys concurrently), "partition"
        (one at a time per partition), or a function of the raw message giving the ordering key.
        ``retry_topics=(5, 60)``: retries go through `<topic>.retry.1` (run again >= 5 s later), then
        `<topic>.retry.2` (>= 60 s later, also for every further retry) instead of waiting in the worker:
        the source partition moves on (a key's order is NOT kept across such a retry).
        """
        if topic in self.handlers:
            raise ConfigError(f"topic {topic!r} already has a handler ({self.handlers[topic].name})")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1 (handler for {topic!r}), got {concurrency}")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout must be > 0 or None (handler for {topic!r}), got {timeout}")
        if max_deliveries is not None and max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be >= 1 or None (handler for {topic!r})")
        if ordering not in ("key", "partition") and not callable(ordering):
            raise ConfigError(f"ordering must be 'key', 'partition' or a function, got {ordering!r}")
        if any(d <= 0 for d in retry_topics):
            raise ConfigError(f"retry_topics delays must be > 0 seconds (handler for {topic!r}), got {retry_topics}")
        if on_open == "fallback" and fallback is None:
            raise ConfigError(f"on_open='fallback' needs fallback= (handler for {topic!r})")
        buffered = max_buffered if max_buffered is not None else max(concurrency * 8, 10_000)
        if buffered < concurrency:
            raise ConfigError(f"max_buffered ({buffered}) must be >= concurrency ({concurrency})")
        decoder = make_decoder(model, codec)

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            takes_ctx = _accepts(fn)
            if fallback is not None:
                _accepts(fallback)
            self.handlers[topic] = HandlerSpec(
                topic=topic, fn=fn, name=name or f"{fn.__module__}.{fn.__qualname__}", decoder=decoder,
                is_async=inspect.iscoroutinefunction(fn), takes_ctx=takes_ctx, concurrency=concurrency,
                max_buffered=buffered, timeout=timeout, ordering=ordering, key=key, retry=retry,
                dlq=dlq or f"{topic}.dlq", quarantine=quarantine or f"{topic}.quarantine",
                max_deliveries=max_deliveries, max_message_bytes=max_message_bytes, breakers=tuple(breakers),
                on_open=on_open, fallback=fallback, retry_topics=tuple(float(d) for d in retry_topics))
            return fn

        return register

    def worker(self, **overrides: Any) -> Any:
        """Build the worker that runs this app (see :class:`streamguard.runtime.worker.Worker`)."""
        from streamguard.runtime.worker import Worker

        return Worker(self, **overrides)

    def run(self) -> None:
        """Consume until SIGTERM/SIGINT (first: drain and commit; second: leave at once)."""
        if not self.handlers:
            raise ConfigError(f"app {self.name!r} has no handlers")
        self.worker().run()
