"""Sub-commands that grow with the runtime (run, dlq, quarantine, chaos); registered into the parser."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the runtime's sub-commands to ``sub`` (an argparse sub-parser action)."""
    _ = sub, argparse
