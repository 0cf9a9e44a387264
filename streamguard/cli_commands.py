"""Sub-commands that grow with the runtime (run, dlq, quarantine, chaos); registered into the parser."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from streamguard.errors import ConfigError


def load_app(path: str) -> Any:
    """Import ``module:attribute`` and return the App; a clear ConfigError when that fails."""
    from streamguard.app import App

    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected MODULE:APP (e.g. examples.orders:app), got {path!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{path!r} is not a streamguard App (found {type(app).__name__})")
    return app


def _cmd_run(args: argparse.Namespace) -> int:
    from streamguard.observability.logs import configure_logging

    configure_logging(args.log_level, json=args.log_json)
    app = load_app(args.app)
    if args.http_port is not None:
        app.settings.http_port = args.http_port
    if args.workers > 1:
        raise ConfigError("--workers N (the multi-process supervisor) is not built yet; run N processes of "
                          "`streamguard run` yourself: they share the consumer group")
    from streamguard.runtime.service import run_worker

    return run_worker(app)


def register(sub: Any) -> None:
    """Add the runtime's sub-commands to ``sub`` (an argparse sub-parser action)."""
    run = sub.add_parser("run", help="run an App: streamguard run module:app")
    run.add_argument("app", help="MODULE:APP, e.g. examples.orders:app")
    run.add_argument("--workers", type=int, default=1, help="worker processes in the same group (supervised)")
    run.add_argument("--http-port", type=int, default=None, help="serve /metrics /healthz /readyz on this port")
    run.add_argument("--log-level", default=os.environ.get("STREAMGUARD_LOG_LEVEL", "INFO"))
    run.add_argument("--log-json", action="store_true", default=os.environ.get("STREAMGUARD_LOG_JSON") == "1")
    run.set_defaults(func=_cmd_run)

    from streamguard.chaos.cli import register_cli
    from streamguard.ops.cli import register_cli as register_ops

    chaos = sub.add_parser("chaos", help="fault injection: a Toxiproxy-style TCP proxy")
    register_cli(chaos.add_subparsers(dest="chaos_cmd", required=True))
    register_ops(sub)
    _ = logging
