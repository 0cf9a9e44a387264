"""The worker's HTTP endpoints: ``/metrics`` for Prometheus, ``/healthz`` (liveness) and ``/readyz``.

It runs on a daemon thread with the stdlib ``ThreadingHTTPServer``, so a slow scrape never blocks the poll
loop and a stuck server never keeps the process alive on shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Check", "HealthServer"]

_log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
"""A probe: ``(ok, detail)``; the detail is the body (after ``ok``) or the 503 reason."""


def _no_check() -> tuple[bool, str]:
    return True, "no check configured"


class HealthServer:
    """Serve metrics and probes on ``host:port`` (port 0 picks a free port; read ``port`` after ``start``)."""

    def __init__(
        self,
        metrics_registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        healthy: Check = _no_check,
        ready: Check = _no_check,
    ) -> None:
        self.registry = metrics_registry
        self.host = host
        self._port = port
        self.healthy = healthy
        self.ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._server.server_address[1] if self._server is not None else self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Bind and serve on a daemon thread; binding errors are raised here, at startup."""
        if self._server is not None:
            raise RuntimeError("HealthServer already started")
        server = ThreadingHTTPServer((self.host, self._port), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="streamguard-health", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _respond(self, path: str) -> tuple[int, str, bytes]:
        """Route one GET: ``(status, content type, body)``."""
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path in ("/healthz", "/readyz"):
            check = self.healthy if path == "/healthz" else self.ready
            try:
                ok, detail = check()
            except Exception as exc:  # a broken probe means "not ok", never a crashed server thread
                _log.exception("probe %s failed", path)
                ok, detail = False, f"check failed: {type(exc).__name__}: {exc}"
            body = f"ok {detail}".rstrip() if ok else (detail or "not ok")
            return (200 if ok else 503), "text/plain; charset=utf-8", (body + "\n").encode("utf-8")
        return 404, "text/plain; charset=utf-8", b"not found\n"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "streamguard"

            def do_GET(self) -> None:
                self._send(include_body=True)

            def do_HEAD(self) -> None:
                self._send(include_body=False)

            def _send(self, *, include_body: bool) -> None:
                status, content_type, body = owner._respond(urlsplit(self.path).path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if include_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                _log.debug("health server: " + format, *args)

        return Handler
