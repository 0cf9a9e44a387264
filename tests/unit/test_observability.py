"""Metrics on a private registry, the health/metrics HTTP server, and JSON logs."""

from __future__ import annotations

import io
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamguard.core.breaker import CircuitBreaker
from streamguard.observability.logs import JsonFormatter, bind, configure_logging
from streamguard.observability.metrics import OUTCOMES, Metrics
from streamguard.observability.server import HealthServer

# Never route loopback requests through a proxy configured in the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with _opener.open(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


# -- metrics ---------------------------------------------------------------------------------------------------


def test_metric_names_follow_the_convention_and_live_on_the_given_registry() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    names = {m.name for m in registry.collect()}
    assert names == {
        "streamguard_messages", "streamguard_handler_duration_seconds", "streamguard_inflight_messages",
        "streamguard_paused_partitions", "streamguard_commits", "streamguard_consumer_lag_messages",
        "streamguard_retries", "streamguard_dlq_produce_pending", "streamguard_breaker_state",
        "streamguard_breaker_transitions", "streamguard_sequence_gaps", "streamguard_rebalances",
        "streamguard_worker_restarts",
    }  # counters are exposed with the _total suffix
    metrics.message_resolved("orders", "dead_lettered")
    metrics.message_resolved("orders", "dead_lettered")
    assert registry.get_sample_value("streamguard_messages_total", {"topic": "orders", "outcome": "dead_lettered"}) == 2


def test_two_metrics_objects_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.worker_restarts.inc()
    assert a.registry is not b.registry
    assert b.registry.get_sample_value("streamguard_worker_restarts_total") == 0


def test_unknown_outcome_is_refused_to_keep_labels_bounded() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        Metrics().message_resolved("orders", "exploded")
    assert {"ok", "retried", "dead_lettered", "quarantined", "duplicate_skipped", "failed"} == OUTCOMES


def test_breaker_listener_tracks_state_and_transitions() -> None:
    metrics = Metrics()
    now = [0.0]
    breaker = CircuitBreaker("payments", window=2, min_calls=2, open_for=10, half_open_calls=1, clock=lambda: now[0])
    breaker.add_listener(metrics.breaker_changed)
    breaker.record_failure()
    breaker.record_failure()
    get = metrics.registry.get_sample_value
    assert get("streamguard_breaker_state", {"breaker": "payments"}) == 2
    now[0] = 10
    assert breaker.allow()
    assert get("streamguard_breaker_state", {"breaker": "payments"}) == 1
    breaker.record_success()
    assert get("streamguard_breaker_state", {"breaker": "payments"}) == 0
    assert get("streamguard_breaker_transitions_total", {"breaker": "payments", "to": "open"}) == 1
    assert get("streamguard_breaker_transitions_total", {"breaker": "payments", "to": "closed"}) == 1


def test_forget_partition_removes_its_gauges() -> None:
    metrics = Metrics()
    metrics.inflight_messages.labels(topic="t", partition="3").set(5)
    metrics.consumer_lag.labels(topic="t", partition="3").set(7)
    metrics.consumer_lag.labels(topic="t", partition="4").set(1)
    metrics.forget_partition("t", 3)
    metrics.forget_partition("t", 3)  # idempotent
    get = metrics.registry.get_sample_value
    assert get("streamguard_inflight_messages", {"topic": "t", "partition": "3"}) is None
    assert get("streamguard_consumer_lag_messages", {"topic": "t", "partition": "3"}) is None
    assert get("streamguard_consumer_lag_messages", {"topic": "t", "partition": "4"}) == 1


# -- server ------------------------------------------------------------------------------------------------


@pytest.fixture
def probes() -> dict[str, tuple[bool, str]]:
    return {"healthy": (True, "poll loop alive"), "ready": (False, "partitions not assigned yet")}


@pytest.fixture
def server(probes: dict[str, tuple[bool, str]]) -> Iterator[HealthServer]:
    metrics = Metrics()
    metrics.message_resolved("orders", "ok")
    srv = HealthServer(metrics.registry, port=0, healthy=lambda: probes["healthy"], ready=lambda: probes["ready"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_metrics_endpoint_serves_prometheus_text(server: HealthServer) -> None:
    assert server.port != 0
    status, content_type, body = fetch(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert 'streamguard_messages_total{outcome="ok",topic="orders"} 1.0' in body
    assert "# TYPE streamguard_handler_duration_seconds histogram" in body


def test_probes_report_ok_or_503_with_reason(server: HealthServer, probes: dict[str, tuple[bool, str]]) -> None:
    assert fetch(server.url + "/healthz")[::2] == (200, "ok poll loop alive\n")
    assert fetch(server.url + "/readyz")[::2] == (503, "partitions not assigned yet\n")
    probes["ready"] = (True, "")
    probes["healthy"] = (False, "poll loop stalled for 120s")
    assert fetch(server.url + "/readyz?verbose=1")[::2] == (200, "ok\n")
    assert fetch(server.url + "/healthz")[::2] == (503, "poll loop stalled for 120s\n")


def test_unknown_path_is_404(server: HealthServer) -> None:
    assert fetch(server.url + "/nope")[0] == 404
    assert fetch(server.url + "/")[0] == 404


def test_a_raising_probe_is_a_503_not_a_dead_server() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("db gone")

    with HealthServer(CollectorRegistry(), healthy=broken) as srv:
        status, _, body = fetch(srv.url + "/healthz")
        assert status == 503 and "RuntimeError: db gone" in body
        assert fetch(srv.url + "/readyz")[0] == 200


def test_stop_releases_the_port_and_is_idempotent() -> None:
    srv = HealthServer(CollectorRegistry())
    srv.start()
    url = srv.url + "/healthz"
    assert fetch(url)[0] == 200
    with pytest.raises(RuntimeError, match="already started"):
        srv.start()
    srv.stop()
    srv.stop()
    with pytest.raises(urllib.error.URLError):
        _opener.open(url, timeout=2)


# -- logs --------------------------------------------------------------------------------------------------


def make_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_formatter_includes_context_fields_and_drops_payloads() -> None:
    logger, stream = make_logger("sg.test.fields")
    logger.warning("handler failed for %s", "order", extra={
        "topic": "orders", "partition": 2, "offset": 99, "key": b"k\xff" + b"x" * 1000, "attempt": 3,
        "idempotency_key": "order-7", "worker": "w1", "breaker": "db", "value": b"SECRET-PAYLOAD",
    })
    [doc] = lines(stream)
    assert doc["msg"] == "handler failed for order"
    assert doc["level"] == "WARNING" and doc["logger"] == "sg.test.fields"
    assert (doc["topic"], doc["partition"], doc["offset"], doc["attempt"]) == ("orders", 2, 99, 3)
    assert (doc["idempotency_key"], doc["worker"], doc["breaker"]) == ("order-7", "w1", "db")
    assert isinstance(doc["key"], str) and doc["key"].startswith("k\ufffd") and len(doc["key"]) <= 260
    assert "value" not in doc
    assert "SECRET-PAYLOAD" not in stream.getvalue()
    assert str(doc["ts"]).endswith("+00:00")


def test_json_formatter_renders_exceptions() -> None:
    logger, stream = make_logger("sg.test.exc")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    [doc] = lines(stream)
    assert "ValueError: boom" in str(doc["exc"])


def test_bind_merges_fields_and_call_extra_wins() -> None:
    logger, stream = make_logger("sg.test.bind")
    log = bind(logger, topic="orders", partition=1)
    log = bind(log, offset=5)
    log.info("one")
    log.info("two", extra={"offset": 6, "attempt": 2})
    first, second = lines(stream)
    assert (first["topic"], first["partition"], first["offset"]) == ("orders", 1, 5)
    assert (second["offset"], second["attempt"]) == (6, 2)
    assert "attempt" not in first


def test_bind_refuses_reserved_and_payload_fields() -> None:
    logger = logging.getLogger("sg.test.reserved")
    with pytest.raises(ValueError, match="reserved"):
        bind(logger, name="x")
    with pytest.raises(ValueError, match="payload"):
        bind(logger, value=b"x")


def test_configure_logging_installs_one_handler_and_replaces_it() -> None:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    try:
        first, second = io.StringIO(), io.StringIO()
        configure_logging("debug", json=True, stream=first)
        configure_logging("INFO", json=False, stream=second)
        assert len(root.handlers) == len(before_handlers) + 1
        logging.getLogger("sg.test.configure").info("hello", extra={"topic": "t"})
        assert first.getvalue() == ""
        assert "INFO sg.test.configure: hello" in second.getvalue()
        configure_logging(logging.WARNING, stream=first)
        logging.getLogger("sg.test.configure").warning("json now")
        assert orjson.loads(first.getvalue().splitlines()[-1])["msg"] == "json now"
    finally:
        for handler in list(root.handlers):
            if handler not in before_handlers:
                root.removeHandler(handler)
        root.setLevel(before_level)


def test_observe_many_exposes_the_same_histogram_as_observing_one_by_one() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from streamguard.observability.metrics import observe_many

    values = [0.0, 0.0004, 0.001, 0.0049, 0.005, 0.02, 0.3, 2.5, 7.0, 99.0, 1e9]
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    a = Histogram("d_seconds", "x", ["topic"], registry=reg_a).labels(topic="t")
    b = Histogram("d_seconds", "x", ["topic"], registry=reg_b).labels(topic="t")
    for v in values:
        a.observe(v)
    observe_many(b, values)
    observe_many(b, [])

    def exposed(reg: CollectorRegistry) -> list[str]:  # without the *_created timestamps, which differ
        return [line for line in generate_latest(reg).decode().splitlines() if "_created" not in line]

    assert exposed(reg_a) == exposed(reg_b)
