"""Injected crash points: SIGKILL-equivalent exits at named places inside the runtime, for chaos tests.

Set ``STREAMGUARD_CRASH_AT=point:probability[,point:probability...]`` in a worker's environment; each time
the runtime passes a named point it exits the process at once (``os._exit(137)``) with that probability.
Points: ``before_commit``, ``during_dlq_write``. Handler-side points (before/after the effect) belong
to the test's handler. Without the variable this costs one dict lookup.
"""

from __future__ import annotations

import os
import random

_POINTS: dict[str, float] = {}
for _item in filter(None, os.environ.get("STREAMGUARD_CRASH_AT", "").split(",")):
    _name, _, _p = _item.partition(":")
    _POINTS[_name.strip()] = float(_p or 1.0)
_rnd = random.Random(os.environ.get("STREAMGUARD_CRASH_SEED"))


def maybe_crash(point: str) -> None:
    """Exit the process now if ``point`` is armed and the dice say so."""
    p = _POINTS.get(point)
    if p and _rnd.random() < p:
        os._exit(137)


def armed() -> bool:
    return bool(_POINTS)
