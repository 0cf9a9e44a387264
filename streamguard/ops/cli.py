"""`streamguard dlq ...` and `streamguard quarantine ...` (registered by cli_commands)."""

from __future__ import annotations

from typing import Any


def register_cli(sub: Any) -> None:
    """Add the `dlq` and `quarantine` commands to the top-level sub-parsers ``sub``."""
    _ = sub
