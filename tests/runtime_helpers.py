"""Run a streamguard worker in a thread for integration tests, and wait on conditions."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from streamguard import App


@contextlib.contextmanager
def running(app: App, *, ready_timeout: float = 60.0, **kw: Any) -> Iterator[Any]:
    """Start ``app``'s worker on a thread; stop (drain) it on exit; re-raise a crash of the worker."""
    worker = app.worker(install_signals=False, **kw)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + ready_timeout
        while not worker.wait_ready(0.2):
            if errors:
                raise errors[0]
            assert time.monotonic() < deadline, "worker did not get an assignment"
        yield worker
    finally:
        worker.stop()
        t.join(60)
        assert not t.is_alive(), "worker did not stop"
    if errors:
        raise errors[0]


def wait_until(cond: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(interval)
