"""Run one worker process: the worker, its /metrics /healthz /readyz endpoint, and its exit code."""

from __future__ import annotations

import logging
import os

from streamguard.app import App
from streamguard.errors import AuthenticationFailed

log = logging.getLogger("streamguard.service")


def run_worker(app: App) -> int:
    """Run ``app`` in this process until SIGTERM/SIGINT; 0 on a clean stop, 3 on rejected credentials."""
    from streamguard.observability.server import HealthServer

    worker = app.worker()
    server = None
    port = app.settings.http_port
    if port is None and os.environ.get("STREAMGUARD_HTTP_PORT"):
        port = int(os.environ["STREAMGUARD_HTTP_PORT"])
    if port is not None:
        server = HealthServer(worker.metrics.registry, app.settings.http_host, port, healthy=worker.healthy,
                              ready=worker.ready)
        server.start()
        log.info("serving /metrics /healthz /readyz on http://%s:%d", app.settings.http_host, server.port)
    try:
        worker.run()
    except AuthenticationFailed as exc:
        log.error("%s", exc)
        return 3
    finally:
        if server is not None:
            server.stop()
    if worker.stats["auth_failed"]:
        log.error("the cluster rejected this worker's credentials; not retrying")
        return 3
    if worker.stats["fatal_errors"]:
        log.error("the Kafka client hit a fatal error; the worker stopped (exit 1, the supervisor restarts it)")
        return 1
    return 0
