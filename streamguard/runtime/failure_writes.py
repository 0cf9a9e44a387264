"""``Worker``'s writes of failed records to the retry, DLQ and quarantine topics.

Kept apart from the decision (message_path.py) because the write has its own rule: the record is only
resolved once the broker acknowledged it, so the write retries forever and the partition waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from streamguard.chaos.crashpoints import armed, maybe_crash
from streamguard.context import Context
from streamguard.core.envelope import FailureInfo, dead_letter_headers, describe_error, retry_headers
from streamguard.errors import KafkaOperationError
from streamguard.runtime.partition import PartitionState
from streamguard.runtime.worker_state import WorkerState

log = logging.getLogger("streamguard.worker")  # the worker's logger, whichever part of it logs
_CRASH = armed()


class FailureWrites(WorkerState):
    """Failed records to retry / DLQ / quarantine topics, acknowledged before they count as resolved."""

    def _failure_info(self, st: PartitionState, exc: BaseException, attempts: int, reason: str,
                      idem_key: str | None, first_failure: float | None) -> FailureInfo:
        etype, emsg, stack = describe_error(exc)
        return FailureInfo(error_type=etype, error_message=emsg, stack=stack, attempts=attempts,
                           first_failure_ms=int((first_failure or time.time()) * 1000),
                           last_failure_ms=int(time.time() * 1000), handler=st.spec.name, worker_id=self.worker_id,
                           reason=reason, idempotency_key=idem_key)

    async def _to_retry_topic(self, st: PartitionState, m: Any, ctx: Context, exc: BaseException, attempt: int,
                              first_failure: float | None) -> str | None:
        """Send the original record to the next retry topic with a not-before time; resolve it here."""
        origin_spec = self._specs[st.spec.retry_of] if st.spec.retry_of else st.spec
        level = min(st.spec.retry_level + 1, len(origin_spec.retry_topics))
        delay = origin_spec.retry_topics[level - 1]
        src = ctx.origin or (st.topic, st.partition, m.offset(), m.timestamp()[1], 0, None)
        info = self._failure_info(st, exc, attempt, "retry", ctx.idempotency_key, first_failure)
        key, value = m.key(), m.value()
        headers = retry_headers(m.headers(), source_topic=src[0], partition=src[1], offset=src[2],
                                timestamp_ms=src[3], not_before_ms=int((time.time() + delay) * 1000),
                                attempt=attempt, info=info, key_len=len(key or b""), value_len=len(value or b""))
        if not await self._write(st, m, origin_spec.retry_topic(level), key, value, headers):
            return None
        self.stats["sent_to_retry_topic"] += 1
        self.metrics.retries.labels(topic=origin_spec.topic).inc()
        return "retry_scheduled"

    async def _write(self, st: PartitionState, m: Any, topic: str, key: bytes | None, value: bytes | None,
                     headers: list[tuple[str, bytes]]) -> bool:
        """Produce and wait for the ack, retrying forever (the partition waits); False if fenced meanwhile."""
        producer = self._producer
        assert producer is not None
        delay = 0.2
        self._dlq_pending(+1)
        try:
            while True:
                if st.revoked:
                    return False
                try:
                    fut = producer.send(topic, value, key, headers, partition=None)
                    if _CRASH:
                        maybe_crash("during_dlq_write")
                    await asyncio.wrap_future(fut)
                    break
                except KafkaOperationError as err:
                    self.stats["failure_write_errors"] += 1
                    log.warning("could not write %s[%d]@%d to %s (%s); retrying in %.1fs; the partition does "
                                "not commit past it", st.topic, st.partition, m.offset(), topic, err, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            self._dlq_pending(-1)
        return True

    async def _divert(self, st: PartitionState, m: Any, topic: str, reason: str, exc: BaseException,
                      attempts: int, idem_key: str | None, *, release: bool = False, keep_count: bool = False,
                      first_failure: float | None = None,
                      origin: tuple[str, int, int, int | None, int, float | None] | None = None) -> str | None:
        """Write the original record to the DLQ or quarantine topic; wait for the ack, retrying forever."""
        info = self._failure_info(st, exc, attempts, reason, idem_key, first_failure)
        src = origin or (st.topic, st.partition, m.offset(), m.timestamp()[1], 0, None)
        key, value = m.key(), m.value()
        headers = dead_letter_headers(m.headers(), source_topic=src[0], partition=src[1], offset=src[2],
                                      timestamp_ms=src[3], info=info, key_len=len(key or b""),
                                      value_len=len(value or b""))
        if not await self._write(st, m, topic, key, value, headers):
            return None
        extra: dict[str, Any] = {"topic": st.topic, "partition": st.partition, "offset": m.offset(),
                                 "key": key.decode("utf-8", "replace") if key else None, "attempt": attempts,
                                 "idempotency_key": idem_key, "worker": self.worker_id}
        if self.settings.log_values:  # explicit debug switch: values may be sensitive
            extra["value_preview"] = (value or b"")[:200].decode("utf-8", "replace")
        log.warning("%s %s[%d]@%d -> %s: %s: %s", reason, st.topic, st.partition, m.offset(), topic,
                    info.error_type, info.error_message, extra=extra)
        if release and self._store is not None and idem_key is not None:
            # released, not completed: the key was never handled, so a replay of this record must run
            await self._release_key(idem_key, keep_count=keep_count)
        return "quarantined" if reason == "quarantine" else "dead_lettered"

    def _dlq_pending(self, delta: int) -> None:
        self.stats["failure_writes_pending"] += delta
        self.metrics.dlq_produce_pending.set(self.stats["failure_writes_pending"])
