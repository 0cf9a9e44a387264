"""What the parts of :class:`~streamguard.runtime.worker.Worker` share, declared once for the type checker.

``Worker`` is assembled from mixins, one concept per module (serial_lane.py, message_path.py,
failure_writes.py, rebalance.py). Each part uses attributes set in ``Worker.__init__`` and methods defined in
another part; declaring them here lets mypy check every part on its own. Declarations only: the annotations
create no attributes and the method stubs exist under ``TYPE_CHECKING`` only, so at run time every name
resolves to its one real definition.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from confluent_kafka import TopicPartition

    from streamguard.app import App, HandlerSpec, Settings
    from streamguard.context import Context
    from streamguard.kafka.producer import ReliableProducer
    from streamguard.observability.metrics import Metrics
    from streamguard.runtime.gaps import GapDetector
    from streamguard.runtime.partition import Flow, PartitionState
    from streamguard.runtime.solo_gate import SoloGate
    from streamguard.runtime.store_batcher import StoreBatcher

T = TypeVar("T")


class WorkerState:
    """The attributes and cross-part methods of ``Worker`` that its parts use (set and defined elsewhere)."""

    # set in Worker.__init__ / Worker._prepare
    app: App
    settings: Settings
    worker_id: str
    stats: collections.Counter[str]
    metrics: Metrics
    _specs: dict[str, HandlerSpec]
    _gaps: GapDetector | None
    _states: dict[tuple[str, int], PartitionState]
    _flows: dict[tuple[str, int], Flow]
    _acked: dict[tuple[str, int], tuple[int, str]]
    _deadlines: dict[asyncio.Task[Any], float]
    _timed_out: set[asyncio.Task[Any]]
    _watchdog: asyncio.TimerHandle | None
    _watch_every: float
    _hard_stop: threading.Event
    _ready: threading.Event
    _loop: asyncio.AbstractEventLoop
    _pool: concurrent.futures.ThreadPoolExecutor
    _store_pool: concurrent.futures.ThreadPoolExecutor
    _keys_in_flight: dict[str, asyncio.Event]
    _held: dict[str, int]
    _renewer: asyncio.Task[None] | None
    _gate: SoloGate | None
    _producer: ReliableProducer | None
    _store: StoreBatcher | None

    if TYPE_CHECKING:
        # worker.py
        def _call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 60.0) -> T: ...
        def _commit_snapshot(self, only: set[tuple[str, int]] | None = None) -> list[TopicPartition]: ...
        def _start_ready(self, st: PartitionState) -> None: ...
        def _resolve(self, st: PartitionState, key: Any, offset: int, *,
                     take_one: bool = False) -> tuple[Any, Any] | None: ...
        def _count(self, outcome: str, topic: str, n: int = 1) -> None: ...
        def _observe_duration(self, topic: str, seconds: float) -> None: ...
        def _emit(self, event: str, data: dict[str, Any]) -> None: ...

        # message_path.py
        async def _process(self, st: PartitionState, key: Any, m: Any,
                           prior: BaseException | None = None) -> None: ...
        def _idempotency_key(self, spec: HandlerSpec, model: Any, ctx: Context) -> str: ...
        async def _release_key(self, key: str, *, keep_count: bool) -> None: ...

        # failure_writes.py
        async def _divert(self, st: PartitionState, m: Any, topic: str, reason: str, exc: BaseException,
                          attempts: int, idem_key: str | None, *, release: bool = False, keep_count: bool = False,
                          first_failure: float | None = None,
                          origin: tuple[str, int, int, int | None, int, float | None] | None = None) -> str | None: ...
        async def _to_retry_topic(self, st: PartitionState, m: Any, ctx: Context, exc: BaseException, attempt: int,
                                  first_failure: float | None) -> str | None: ...
