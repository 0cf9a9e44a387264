"""Sub-commands that grow with the runtime (run, dlq, quarantine, chaos); registered into the parser."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path
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


def _effective_settings(app: Any, args: argparse.Namespace) -> tuple[Any, Path | None]:
    """Apply the one precedence order (code < TOML < environment < CLI flags) to ``app``; see config.py."""
    from streamguard.config import describe_settings, load_settings_with_sources, resolve_brokers, resolve_config_path

    toml_path = resolve_config_path(args.config)
    cli: dict[str, Any] = {}
    if args.http_port is not None:
        cli["http_port"] = args.http_port
    settings, sources = load_settings_with_sources(app.settings, toml_path=toml_path, env=os.environ, cli=cli)
    app.settings = settings
    app.brokers, brokers_from = resolve_brokers(app.brokers, os.environ)
    log = logging.getLogger("streamguard.config")
    log.info("brokers %s (from %s); config file: %s", app.brokers, brokers_from, toml_path or "none")
    log.info("settings not from code: %s", describe_settings(settings, sources))
    return settings, toml_path


def _worker_command(args: argparse.Namespace, toml_path: Path | None, http_port: int | None,
                    index: int) -> list[str]:
    """The command line of worker ``index``: the supervisor's own `run` arguments minus --workers."""
    cmd = [sys.executable, "-m", "streamguard.cli", "run", args.app, "--log-level", str(args.log_level)]
    if args.log_json:
        cmd.append("--log-json")
    if toml_path is not None:
        cmd += ["--config", str(toml_path)]
    if http_port is not None:
        cmd += ["--http-port", str(http_port + index)]
    return cmd


def _preflight(app: Any) -> None:
    """Reach the cluster once with the worker's own security settings before starting anything.

    Turns rejected credentials into :class:`AuthenticationFailed` (exit 3) within seconds and an unreachable
    cluster into :class:`KafkaUnavailable` (exit 2) within ``startup_timeout``, so neither the single worker
    nor the supervisor's N workers retry forever. The worker's own startup checks credentials too; doing it
    here first gives the supervisor one clear failure instead of N.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    from streamguard.errors import AuthenticationFailed, KafkaUnavailable

    prefixes = ("bootstrap.", "security.", "sasl.", "ssl.", "socket.", "client.")
    errors: list[KafkaError] = []
    config = {"bootstrap.servers": app.brokers, **{k: v for k, v in app.settings.kafka.items()
                                                   if k.startswith(prefixes)},
              "log_level": 0, "error_cb": errors.append}
    try:
        admin = AdminClient(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid security/connection setting: {exc}") from exc
    auth_codes = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
    timeout = app.settings.startup_timeout
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            admin.list_topics(timeout=max(0.2, min(1.0, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc
        admin.poll(0)
        rejected = [e for e in errors if e.code() in auth_codes]
        if rejected:
            user = app.settings.kafka.get("sasl.username")
            who = f" of user {user!r}" if user else ""
            raise AuthenticationFailed(f"the cluster at {app.brokers} rejected the credentials{who}: "
                                       f"{rejected[0].str()}; not retrying (fix the credentials)")
        if time.monotonic() >= deadline:
            raise KafkaUnavailable(f"no broker reachable at {app.brokers} within {timeout:.0f}s ({last})")


def _cmd_run(args: argparse.Namespace) -> int:
    from streamguard.observability.logs import configure_logging

    configure_logging(args.log_level, json=args.log_json)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    app = load_app(args.app)  # also the supervisor's fail-fast check of the import path
    settings, toml_path = _effective_settings(app, args)
    from streamguard.errors import AuthenticationFailed

    try:
        _preflight(app)
    except AuthenticationFailed as exc:
        print(f"streamguard: {exc}", file=sys.stderr, flush=True)
        return 3
    if args.workers > 1:
        from streamguard.runtime.supervisor import Supervisor

        if not app.handlers:
            raise ConfigError(f"app {app.name!r} has no handlers")
        port = settings.http_port
        supervisor = Supervisor(lambda i: _worker_command(args, toml_path, port, i), args.workers,
                                shutdown_timeout=settings.shutdown_timeout)
        logging.getLogger("streamguard.supervisor").info(
            "supervising %d workers of %s (group %s)", args.workers, args.app, app.group_id)
        return supervisor.run()
    from streamguard.runtime.service import run_worker

    return run_worker(app)


def register(sub: Any) -> None:
    """Add the runtime's sub-commands to ``sub`` (an argparse sub-parser action)."""
    run = sub.add_parser("run", help="run an App: streamguard run module:app")
    run.add_argument("app", help="MODULE:APP, e.g. examples.orders:app")
    run.add_argument("--workers", type=int, default=1, help="worker processes in the same group (supervised)")
    run.add_argument("--http-port", type=int, default=None, help="serve /metrics /healthz /readyz on this port")
    run.add_argument("--config", default=None, metavar="PATH",
                     help="TOML settings file (default: ./streamguard.toml if present); see docs/running.md")
    run.add_argument("--log-level", default=os.environ.get("STREAMGUARD_LOG_LEVEL", "INFO"))
    run.add_argument("--log-json", action="store_true", default=os.environ.get("STREAMGUARD_LOG_JSON") == "1")
    run.set_defaults(func=_cmd_run)

    from streamguard.chaos.cli import register_cli
    from streamguard.ops.cli import register_cli as register_ops

    chaos = sub.add_parser("chaos", help="fault injection: a Toxiproxy-style TCP proxy")
    register_cli(chaos.add_subparsers(dest="chaos_cmd", required=True))
    register_ops(sub)
