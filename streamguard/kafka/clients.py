"""The only place that builds confluent-kafka clients and maps their errors to streamguard's.

Configuration is validated by librdkafka itself when a client is built; its complaint is turned into a
:class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamguard.errors import AuthenticationFailed, ConfigError, KafkaOperationError, KafkaUnavailable, UnknownTopic

_AUTH_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
               KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
               KafkaError.CLUSTER_AUTHORIZATION_FAILED}


def map_error(err: KafkaError | KafkaException | BaseException, what: str) -> Exception:
    """One mapping from librdkafka errors to streamguard errors."""
    kerr = err.args[0] if isinstance(err, KafkaException) and err.args else err
    if isinstance(kerr, KafkaError):
        if kerr.code() in _AUTH_CODES:
            return AuthenticationFailed(f"{what}: {kerr.str()}")
        if kerr.code() in (KafkaError._INVALID_ARG, KafkaError._UNKNOWN_PARTITION):
            return ConfigError(f"{what}: {kerr.str()}")
        if kerr.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT):
            return KafkaUnavailable(f"{what}: {kerr.str()}")
        return KafkaOperationError(f"{what}: {kerr.str()}")
    return KafkaOperationError(f"{what}: {err}")


def _build(cls: Any, config: Mapping[str, Any], role: str) -> Any:
    try:
        return cls(dict(config))
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid {role} setting: {exc}") from exc


def make_consumer(config: Mapping[str, Any]) -> Consumer:
    return _build(Consumer, config, "consumer")


def make_producer(config: Mapping[str, Any]) -> Producer:
    return _build(Producer, config, "producer")


def make_admin(config: Mapping[str, Any]) -> AdminClient:
    allowed = {k: v for k, v in config.items() if k.startswith(("bootstrap.", "security.", "sasl.", "ssl.",
                                                                 "client.", "socket.", "log", "metadata.",
                                                                 "error_cb"))}
    return _build(AdminClient, allowed, "admin")


def wait_for_cluster(admin: AdminClient, timeout: float, bootstrap: str,
                     abort: Callable[[], bool] | None = None) -> Any:
    """Cluster metadata, or :class:`KafkaUnavailable` after ``timeout`` seconds of trying.

    librdkafka reports rejected credentials only through ``error_cb`` while the client is polled, so
    after each failure the admin client is polled and ``abort()`` (set by that callback) ends the wait
    with :class:`AuthenticationFailed` instead of a misleading "unreachable".
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            return admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
        except KafkaException as exc:
            mapped = map_error(exc, "listing topics")
            if isinstance(mapped, AuthenticationFailed):
                raise mapped from exc
            last = exc
        admin.poll(0)
        if abort is not None and abort():
            raise AuthenticationFailed(f"the cluster at {bootstrap} rejected the credentials")
        if time.monotonic() >= deadline:
            raise KafkaUnavailable(f"no broker reachable at {bootstrap} within {timeout:.0f}s ({last})")
        time.sleep(0.5)


def partition_counts(admin: AdminClient, topics: Iterable[str], timeout: float, bootstrap: str,
                     abort: Callable[[], bool] | None = None) -> dict[str, int]:
    """Partition count of each topic; :class:`UnknownTopic` naming every missing one."""
    md = wait_for_cluster(admin, timeout, bootstrap, abort)
    counts: dict[str, int] = {}
    missing = []
    for t in topics:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None or not tm.partitions:
            missing.append(t)
        else:
            counts[t] = len(tm.partitions)
    if missing:
        raise UnknownTopic(f"topic(s) not found on {bootstrap}: {', '.join(sorted(missing))} "
                           "(create them first; streamguard never consumes from a topic it guesses)")
    return counts


def ensure_topics(admin: AdminClient, wanted: Mapping[str, int], *, replication: int = -1,
                  config: Mapping[str, str] | None = None, timeout: float = 30.0) -> list[str]:
    """Create the topics of ``wanted`` (name -> partitions) that do not exist; return those created."""
    md = admin.list_topics(timeout=timeout)
    missing = [n for n in wanted if n not in md.topics]
    if not missing:
        return []
    futures = admin.create_topics([NewTopic(n, wanted[n], replication, config=dict(config or {}))
                                   for n in missing], operation_timeout=timeout)
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            kerr = exc.args[0]
            if isinstance(kerr, KafkaError) and kerr.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise ConfigError(f"could not create topic {name!r}: {kerr}. Create it yourself or allow "
                              "topic creation for this principal.") from exc
    deadline = time.monotonic() + timeout
    while created and time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        if all(n in md.topics and md.topics[n].error is None and
               all(p.leader >= 0 for p in md.topics[n].partitions.values()) for n in created):
            break
        time.sleep(0.1)
    return created
