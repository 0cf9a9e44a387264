"""Structured JSON logs: one object per line, with the message's coordinates as fields.

Operators search logs by topic/partition/offset/key, so those travel as fields, not inside the text. Message
*values* are never logged (they may hold personal data): fields that look like payloads are dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import IO, Any

import orjson

__all__ = ["CONTEXT_FIELDS", "BoundLogger", "JsonFormatter", "bind", "configure_logging"]

CONTEXT_FIELDS = ("topic", "partition", "offset", "key", "attempt", "idempotency_key", "worker")
"""Fields shown first when present on a record (via ``extra=`` or ``bind``)."""

_PAYLOAD_FIELDS = frozenset({"value", "payload", "body", "message_value", "data"})
_MAX_KEY_CHARS = 256
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName",
}
_HANDLER_MARK = "_streamguard_handler"


def _key_text(key: object) -> str:
    """Keys may be arbitrary bytes; show them as text and bounded, so one odd key cannot flood a log line."""
    text = key.decode("utf-8", errors="replace") if isinstance(key, bytes | bytearray) else str(key)
    return text if len(text) <= _MAX_KEY_CHARS else text[:_MAX_KEY_CHARS] + "..."


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: ts, level, logger, msg, context fields, other extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        attrs = vars(record)
        for name in CONTEXT_FIELDS:
            value = attrs.get(name)
            if value is not None:
                doc[name] = _key_text(value) if name == "key" else value
        for name, value in attrs.items():
            if name in _STANDARD_ATTRS or name in doc or name in _PAYLOAD_FIELDS or name.startswith("_"):
                continue
            doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")


class BoundLogger(logging.LoggerAdapter):
    """A LoggerAdapter whose fields are merged into each call's ``extra`` (the call's own fields win)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def bind(logger: logging.Logger | logging.LoggerAdapter, **fields: Any) -> BoundLogger:
    """Return a logger that adds ``fields`` to every record; binding a bound logger adds to its fields."""
    clash = set(fields) & _STANDARD_ATTRS
    if clash:
        raise ValueError(f"cannot bind reserved LogRecord attribute(s): {sorted(clash)}")
    payload = set(fields) & _PAYLOAD_FIELDS
    if payload:
        raise ValueError(f"refusing to bind message payload field(s) {sorted(payload)}: values are never logged")
    base: Mapping[str, Any] = {}
    if isinstance(logger, logging.LoggerAdapter):
        base = logger.extra or {}
        logger = logger.logger
    return BoundLogger(logger, {**base, **fields})


def configure_logging(level: int | str = "INFO", json: bool = True, stream: IO[str] | None = None) -> None:
    """Install one root handler (JSON or plain text); calling it again replaces streamguard's handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
