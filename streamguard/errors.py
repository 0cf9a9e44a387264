"""Every exception streamguard raises, and the signals a handler raises to steer the runtime.

The tree::

    StreamguardError                  base of real errors raised by streamguard itself
    +-- ConfigError                   bad configuration, found at startup; the worker does not start
    |   +-- UnknownTopic              a subscribed topic does not exist on the cluster
    |   +-- HandlerSignatureError     a handler cannot be called as (message, ctx)
    +-- KafkaUnavailable              no broker can be reached / started (launcher, bounded startup wait)
    +-- KafkaOperationError           a broker operation failed for good (mapped from KafkaException)
    |   +-- AuthenticationFailed      credentials rejected: the worker stops instead of retrying forever
    +-- DecodeError                   bytes do not decode into the handler's model -> quarantine
    +-- MessageTooLarge               a record over the configured size limit -> quarantine
    +-- HandlerTimeout                a handler ran past its timeout -> a failure for the retry policy
    +-- CrashLoopDetected             a message killed or hung the worker max_deliveries times -> quarantine
    +-- CircuitOpen                   a call refused because its dependency's breaker is open
    +-- LeaseLost                     an idempotency claim was taken over before its transaction committed

    HandlerSignal                     raised *by handlers* on purpose; not an error of streamguard
    +-- RetryLater(delay)             try this message again after ``delay`` seconds (order of its key kept)
    +-- PermanentFailure              do not retry: dead-letter the message now
    +-- Quarantine                    do not retry: quarantine the message for a person to review
"""

from __future__ import annotations


class StreamguardError(Exception):
    """Base class of the errors streamguard raises itself."""


class ConfigError(StreamguardError):
    """Raised at startup for invalid configuration; the worker exits non-zero naming the setting."""


class UnknownTopic(ConfigError):
    """Raised at startup when a subscribed topic does not exist; nothing is consumed."""


class HandlerSignatureError(ConfigError):
    """Raised when a handler is registered that cannot accept ``(message, ctx)``."""


class KafkaUnavailable(StreamguardError):
    """Raised when no broker could be reached or started within the bounded wait."""


class KafkaOperationError(StreamguardError):
    """Raised when a broker operation failed for good (after the client's own retries)."""


class AuthenticationFailed(KafkaOperationError):
    """Raised when the cluster rejects the credentials; retrying cannot help, so the worker stops."""


class DecodeError(StreamguardError):
    """Raised when a record's bytes do not decode into the handler's model; the record is quarantined."""


class MessageTooLarge(StreamguardError):
    """Raised when a record exceeds ``max_message_bytes``; the record is quarantined unprocessed."""


class HandlerTimeout(StreamguardError, TimeoutError):
    """Raised when a handler runs past its ``timeout``; the retry policy decides what happens next."""


class CrashLoopDetected(StreamguardError):
    """Recorded when a message has been delivered ``max_deliveries`` times without resolving; quarantined."""


class CircuitOpen(StreamguardError):
    """Raised when a dependency's breaker is open; the runtime pauses the partition or calls the fallback."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry in {retry_after:.1f}s")
        self.name = name
        self.retry_after = retry_after


class HandlerSignal(Exception):
    """Base of the signals a handler raises on purpose to steer what happens to its message."""


class RetryLater(HandlerSignal):
    """Raised by a handler: run this message again after ``delay`` seconds, keeping its key's order."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry requested in {delay}s")
        self.delay = float(delay)


class PermanentFailure(HandlerSignal):
    """Raised by a handler: this message can never succeed; dead-letter it without retrying."""


class Quarantine(HandlerSignal):
    """Raised by a handler: hold this message for a person; it is never replayed automatically."""


class LeaseLost(StreamguardError):
    """Raised on leaving ``store.transaction(key, owner)`` when another owner took over the expired claim.

    The user's writes and the completion mark are rolled back together; the runtime drops this attempt's
    result (the new owner's run is the one that counts) and does not commit the offset on its behalf.
    """

    def __init__(self, key: str, owner: str) -> None:
        super().__init__(f"owner {owner!r} lost the claim on {key!r} to another owner; the transaction was rolled back")
        self.key = key
        self.owner = owner
