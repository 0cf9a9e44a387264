"""streamguard: a resilient message-processing runtime for Kafka.

Write handler functions, run workers; failures take explicit paths (retry with backoff, dead-letter
queue, poison quarantine) and never lose a message or repeat its side effect.
"""

from streamguard.app import App, HandlerSpec, Settings
from streamguard.context import Context
from streamguard.core.breaker import BreakerState, CircuitBreaker
from streamguard.core.idempotency import ClaimStatus, IdempotencyStore, InMemoryStore
from streamguard.core.retry import GiveUp, Retry, RetryAfter
from streamguard.errors import (
    AuthenticationFailed,
    CircuitOpen,
    ConfigError,
    CrashLoopDetected,
    DecodeError,
    HandlerSignatureError,
    HandlerTimeout,
    KafkaOperationError,
    KafkaUnavailable,
    MessageTooLarge,
    PermanentFailure,
    Quarantine,
    RetryLater,
    StreamguardError,
    UnknownTopic,
)
from streamguard.stores.sqlite import SqliteStore


def __getattr__(name: str) -> object:
    if name == "PostgresStore":  # psycopg is optional
        from streamguard.stores.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(name)


__all__ = [
    "App",
    "AuthenticationFailed",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "ClaimStatus",
    "ConfigError",
    "Context",
    "CrashLoopDetected",
    "DecodeError",
    "GiveUp",
    "HandlerSignatureError",
    "HandlerSpec",
    "HandlerTimeout",
    "IdempotencyStore",
    "InMemoryStore",
    "KafkaOperationError",
    "KafkaUnavailable",
    "MessageTooLarge",
    "PermanentFailure",
    "PostgresStore",
    "Quarantine",
    "Retry",
    "RetryAfter",
    "RetryLater",
    "Settings",
    "SqliteStore",
    "StreamguardError",
    "UnknownTopic",
]
__version__ = "0.1.0"
