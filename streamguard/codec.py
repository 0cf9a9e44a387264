"""Turning record bytes into the handler's model (msgspec), with failures that name the record.

A decode failure is never retried: the bytes will not change, so the record goes to quarantine with
zero handler attempts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from streamguard.errors import ConfigError, DecodeError

Decoder = Callable[[bytes | None], Any]


def _raw(value: bytes | None) -> Any:
    return value


def make_decoder(model: Any, codec: Literal["json", "msgpack"] = "json") -> Decoder:
    """A function bytes -> model; ``model=None`` or ``bytes`` passes raw bytes through."""
    if model is None or model is bytes:
        return _raw
    if codec == "json":
        dec: Any = msgspec.json.Decoder(model)
    elif codec == "msgpack":
        dec = msgspec.msgpack.Decoder(model)
    else:
        raise ConfigError(f"codec must be 'json' or 'msgpack', got {codec!r}")
    decode = dec.decode

    def decoder(value: bytes | None) -> Any:
        if value is None:
            raise DecodeError("record has no value (tombstone) but the handler expects a model")
        try:
            return decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            raise DecodeError(f"cannot decode {len(value)} bytes as {getattr(model, '__name__', model)}: "
                              f"{exc}") from exc

    return decoder
