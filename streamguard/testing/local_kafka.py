"""A real Apache Kafka cluster (1 or 3 KRaft nodes, combined mode) on 127.0.0.1, with node control.

Each node is a JVM started from the jars that :mod:`streamguard.testing.distribution` fetched. The
launcher formats storage, starts the JVMs with small heaps, waits until the cluster answers metadata
and accepts a topic, and stops every JVM it started when its owner exits (context manager, atexit, and
a parent-death signal so even a SIGKILLed test run leaves no ``java`` behind).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamguard.errors import KafkaUnavailable
from streamguard.testing.distribution import KAFKA_VERSION, ensure_kafka_libs, java_executable
from streamguard.testing.security import (
    TlsMaterial,
    broker_listener_properties,
    client_settings,
    make_tls_material,
    scram_format_args,
)

SASL_SSL_LISTENER = "SECURE"

#: ``peer_proxy_for(src, dst, listener, listen, upstream)`` -- see :class:`LocalKafkaCluster`. ``listener`` is
#: ``"internal"`` (replication) or ``"controller"`` (KRaft quorum and broker heartbeats).
PeerProxyHook = Callable[[int, int, str, tuple[str, int], tuple[str, int]], None]
PEER_LISTENERS = ("internal", "controller")


def peer_host(node_id: int, listener: str) -> str:
    """The name node ``node_id``'s ``listener`` is advertised under when peers go through proxies."""
    return f"sg-node-{node_id}.{listener}"


def peer_address(src: int, dst: int) -> str:
    """The loopback address node ``src`` reaches node ``dst`` at (all of 127/8 is loopback on Linux)."""
    if not (0 < src < 256 and 0 < dst < 256):
        raise ValueError(f"node ids must be in 1..255 for peer proxies, got {src}, {dst}")
    return f"127.0.{src}.{dst}"


_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""

JVM_OPTS = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:-UsePerfData", "-Djava.awt.headless=true",
            "-XX:TieredStopAtLevel=1" if os.environ.get("STREAMGUARD_KAFKA_FAST_JIT") else "-XX:+TieredCompilation"]


_handed_out: set[int] = set()  # ports free_port() returned in this process: never twice


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port free on 127.0.0.1 right now, outside the kernel's ephemeral range when there is room below it.

    A broker binds its ports seconds after they are picked (after formatting its storage); every outgoing
    connection meanwhile -- another node's, a client's -- takes its local port from the ephemeral range, and
    one took a broker's port there once ("Address already in use" at startup). Listening ports picked below
    the range can only collide with other listeners.
    """
    lo, _ = _ephemeral_range()
    candidates = range(10_000, lo) if lo - 10_000 >= 1_000 else range(0)
    for _ in range(200 if candidates else 0):
        port = secrets.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the range (or all taken): the OS picks
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL the JVM when the process that started it dies (no orphaned brokers)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_DEATHSIG
    os.setsid()


@dataclass
class KafkaNode:
    """One combined broker+controller JVM: its ports, files and process, and the faults it can take."""

    node_id: int
    client_port: int
    internal_port: int
    controller_port: int
    workdir: Path
    proxied_port: int | None = None
    advertised_proxied: tuple[str, int] | None = None
    sasl_ssl_port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _cmd: list[str] = field(default_factory=list, repr=False)
    _paused: bool = False

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the JVM (storage must be formatted)."""
        if self.is_running():
            return
        with open(self.workdir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(self._cmd, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, cwd=self.workdir)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the broker: a process crash (the page cache survives, so it is not a power loss)."""
        if self.process and self.process.poll() is None:
            if self._paused:
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(30)
        self._paused = False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait for a controlled shutdown; SIGKILL after ``timeout``."""
        if self.process and self.process.poll() is None:
            if self._paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        """SIGSTOP: the broker freezes with its sockets open (a GC pause or a hung host)."""
        if self.is_running() and self.process:
            os.kill(self.process.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process and self._paused:
            os.kill(self.process.pid, signal.SIGCONT)
            self._paused = False

    def restart(self, graceful: bool = False) -> None:
        """Stop (SIGKILL unless ``graceful``) and start again with the same storage and ports."""
        if graceful:
            self.stop()
        else:
            self.kill()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for f in (self.workdir / "stdout.log", self.log_file):
            if f.exists():
                text += f"--- {f} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text


@dataclass(frozen=True)
class PartitionView:
    """One partition as one broker's metadata cache has it."""

    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    error: int = 0


@dataclass(frozen=True)
class NodeMetadata:
    """What one broker answers to a Metadata request (its own cache, possibly stale)."""

    brokers: frozenset[int]
    controller_id: int
    topics: dict[str, dict[int, PartitionView]]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value[0]

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        text = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return text

    def ints(self) -> tuple[int, ...]:
        return tuple(self.take(">i") for _ in range(max(0, self.take(">i"))))


def node_metadata(address: str, topics: list[str] | None = None, timeout: float = 5.0) -> NodeMetadata:
    """Ask exactly the broker at ``address`` (``host:port``) for metadata: one raw Metadata v4 request.

    A Kafka client sends its metadata requests to whichever broker it likes; this answers "what does *this*
    broker believe" (a broker cut off from the controller keeps serving its last view). ``topics=None``: all.
    Raises ``OSError`` (or ``TimeoutError``) if the broker does not answer within ``timeout``.
    """
    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack(">h", len(raw)) + raw

    host, _, port = address.rpartition(":")
    wanted = struct.pack(">i", -1) if topics is None else \
        struct.pack(">i", len(topics)) + b"".join(text(t) for t in topics)
    request = struct.pack(">hhi", 3, 4, 1) + text("streamguard-probe") + wanted + b"\x00"  # no auto-creation
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
        r = _Reader(_recv_exactly(sock, size))
    r.take(">i")  # correlation id
    r.take(">i")  # throttle time
    brokers = set()
    for _ in range(r.take(">i")):
        brokers.add(r.take(">i"))
        r.string()
        r.take(">i")
        r.string()
    r.string()  # cluster id
    controller = r.take(">i")
    result: dict[str, dict[int, PartitionView]] = {}
    for _ in range(r.take(">i")):
        r.take(">h")  # topic error
        name = r.string() or ""
        r.take(">b")  # internal
        parts: dict[int, PartitionView] = {}
        for _ in range(r.take(">i")):
            error, index, leader = r.take(">h"), r.take(">i"), r.take(">i")
            replicas, isr = r.ints(), r.ints()
            parts[index] = PartitionView(leader, replicas, isr, error)
        result[name] = parts
    return NodeMetadata(frozenset(brokers), controller, result)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


_LIVE: weakref.WeakSet[LocalKafkaCluster] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_LIVE):
        cluster.stop()


class LocalKafkaCluster:
    """Start ``nodes`` (1 or 3) KRaft combined nodes on loopback with free ports.

    ``proxy_for`` may map a node id to the (host, port) that clients should be sent to (a fault proxy);
    the node then also listens on a PROXIED listener that advertises that address, while brokers keep
    replicating over their direct INTERNAL listener.

    ``peer_proxy_for`` (opt-in) routes every node-to-node connection through a forwarder per ordered pair, so
    a test can cut one node off from its peers while clients still reach it. The INTERNAL and CONTROLLER
    listeners are then advertised as ``sg-node-<id>.internal:<port>`` and ``sg-node-<id>.controller:<port>``
    and the quorum voters are ``<id>@sg-node-<id>.controller:<port>``; the listeners still bind 127.0.0.1.
    (The CONTROLLER listener must be advertised too: a quorum leader hands its endpoint to the voters, and a
    voter that cannot reach it through its proxy would connect to that endpoint directly, around the cut.)
    Each JVM gets ``-Djdk.net.hosts.file=<workdir>/hosts``, so it resolves names from that file only: its own
    names map to 127.0.0.1, peer ``Y``'s names seen from node ``X`` map to :func:`peer_address` ``(X, Y)`` =
    ``127.0.X.Y``. For each ordered pair and each of :data:`PEER_LISTENERS` the hook is called once, at
    construction, as ``peer_proxy_for(X, Y, listener, listen=("127.0.X.Y", port), upstream=("127.0.0.1",
    port))``; it must have something listening on ``listen`` and forwarding to ``upstream`` before
    :meth:`start` (e.g. a :class:`~streamguard.chaos.proxy.FaultProxy`). Client listeners (CLIENT, PROXIED,
    SASL_SSL) and the Python clients are unchanged; without the hook nothing above applies.

    ``security="sasl_ssl"`` adds a SASL_SSL client listener (SCRAM-SHA-512 over TLS, certificates from a
    throw-away CA made with ``keytool``, see :mod:`streamguard.testing.security`) next to the PLAINTEXT
    one; brokers and controllers keep talking PLAINTEXT. ``sasl_users`` (name -> password) are created at
    format time; by default one user ``alice`` with a random password (see :attr:`sasl_users`). Clients
    use :attr:`sasl_ssl_bootstrap` and :meth:`client_security`.
    """

    def __init__(self, nodes: int = 1, *, version: str = KAFKA_VERSION, workdir: str | Path | None = None,
                 proxy_for: Callable[[int, int], tuple[str, int]] | None = None,
                 peer_proxy_for: PeerProxyHook | None = None,
                 extra_properties: dict[str, str] | None = None,
                 security: Literal["plaintext", "sasl_ssl"] = "plaintext",
                 sasl_users: Mapping[str, str] | None = None) -> None:
        if nodes not in (1, 3):
            raise ValueError(f"nodes must be 1 or 3, got {nodes}")
        if security not in ("plaintext", "sasl_ssl"):
            raise ValueError(f"security must be 'plaintext' or 'sasl_ssl', got {security!r}")
        self.security = security
        self.sasl_users: dict[str, str] = dict(sasl_users) if sasl_users else \
            ({"alice": secrets.token_hex(12)} if security == "sasl_ssl" else {})
        if self.sasl_users:
            scram_format_args(self.sasl_users)  # reject unusable names/passwords now, not at format time
        self.tls: TlsMaterial | None = None
        self.version = version
        self.size = nodes
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="streamguard-kafka-"))
        self.extra_properties = dict(extra_properties or {})
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes: list[KafkaNode] = []
        for i in range(1, nodes + 1):
            node = KafkaNode(i, free_port(), free_port(), free_port(), self.workdir / f"node-{i}")
            if proxy_for is not None:
                node.proxied_port = free_port()
                node.advertised_proxied = proxy_for(i, node.proxied_port)
            if security == "sasl_ssl":
                node.sasl_ssl_port = free_port()
            self.nodes.append(node)
        self.peer_proxied = peer_proxy_for is not None
        if peer_proxy_for is not None:
            for src in self.nodes:
                for dst in self.nodes:
                    if src is dst:
                        continue
                    for listener in PEER_LISTENERS:
                        port = dst.internal_port if listener == "internal" else dst.controller_port
                        listen = (peer_address(src.node_id, dst.node_id), port)
                        peer_proxy_for(src.node_id, dst.node_id, listener, listen, ("127.0.0.1", port))
        self._started = False

    # -- addresses -------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """The client bootstrap string (direct listeners)."""
        return ",".join(n.address for n in self.nodes)

    @property
    def proxied_bootstrap(self) -> str:
        """The bootstrap string through the fault proxies (requires ``proxy_for``)."""
        return ",".join(f"{h}:{p}" for n in self.nodes if n.advertised_proxied for h, p in [n.advertised_proxied])

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """The bootstrap string of the SASL_SSL listeners (requires ``security="sasl_ssl"``)."""
        if self.security != "sasl_ssl":
            raise ValueError("this cluster has no SASL_SSL listener; create it with security='sasl_ssl'")
        return ",".join(f"127.0.0.1:{n.sasl_ssl_port}" for n in self.nodes)

    def client_security(self, user: str, password: str) -> dict[str, Any]:
        """librdkafka settings for a client of the SASL_SSL listener (security.protocol, sasl.*, ssl.ca.location).

        Available once the cluster is started (the CA is made at start).
        """
        if self.security != "sasl_ssl":
            raise ValueError("this cluster has no SASL_SSL listener; create it with security='sasl_ssl'")
        if self.tls is None:
            raise ValueError("start the cluster first: its CA certificate is generated at start")
        return client_settings(self.tls.ca_pem, user, password)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def active_controller(self) -> int | None:
        """The KRaft quorum leader (the active controller), from the nodes' ``quorum-state`` files.

        Each voter rewrites that file on every epoch change; the highest epoch with a known leader wins (a node
        cut off or down keeps an older epoch). Not the ``controller_id`` of a Metadata response: in KRaft that
        is a random live broker.
        """
        best: tuple[int, int] | None = None
        for node in self.nodes:
            path = node.workdir / "data" / "__cluster_metadata-0" / "quorum-state"
            try:
                state = json.loads(path.read_text())
                epoch, leader = int(state["leaderEpoch"]), int(state["leaderId"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if leader >= 0 and (best is None or epoch > best[0]):
                best = (epoch, leader)
        return None if best is None else best[1]

    # -- lifecycle -------------------------------------------------------------------------------
    def _properties(self, node: KafkaNode) -> str:
        n = self.size
        internal_host = peer_host(node.node_id, "internal") if self.peer_proxied else "127.0.0.1"
        voters = ",".join(f"{x.node_id}@{peer_host(x.node_id, 'controller') if self.peer_proxied else '127.0.0.1'}"
                          f":{x.controller_port}" for x in self.nodes)
        listeners = [f"INTERNAL://127.0.0.1:{node.internal_port}", f"CLIENT://127.0.0.1:{node.client_port}",
                     f"CONTROLLER://127.0.0.1:{node.controller_port}"]
        advertised = [f"INTERNAL://{internal_host}:{node.internal_port}", f"CLIENT://127.0.0.1:{node.client_port}"]
        if self.peer_proxied:  # a quorum leader hands its endpoint to the voters (KIP-853): the name, not 127.0.0.1
            advertised.append(f"CONTROLLER://{peer_host(node.node_id, 'controller')}:{node.controller_port}")
        protocols = "INTERNAL:PLAINTEXT,CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        if node.proxied_port and node.advertised_proxied:
            listeners.append(f"PROXIED://127.0.0.1:{node.proxied_port}")
            host, port = node.advertised_proxied
            advertised.append(f"PROXIED://{host}:{port}")
            protocols += ",PROXIED:PLAINTEXT"
        secure: dict[str, str] = {}
        if node.sasl_ssl_port and self.tls is not None:
            listeners.append(f"{SASL_SSL_LISTENER}://127.0.0.1:{node.sasl_ssl_port}")
            advertised.append(f"{SASL_SSL_LISTENER}://127.0.0.1:{node.sasl_ssl_port}")
            protocols += f",{SASL_SSL_LISTENER}:SASL_SSL"
            secure = broker_listener_properties(SASL_SSL_LISTENER, self.tls)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": protocols,
            "log.dirs": str(node.workdir / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(n),
            "min.insync.replicas": "2" if n >= 3 else "1",
            "unclean.leader.election.enable": "false",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": str(n),
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": str(n),
            "transaction.state.log.min.isr": "2" if n >= 3 else "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": str(n),
            "share.coordinator.state.topic.min.isr": "2" if n >= 3 else "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.replica.fetchers": "1",
            "background.threads": "2",
            "log.cleaner.threads": "1",
            "num.recovery.threads.per.data.dir": "1",
            "replica.lag.time.max.ms": "10000",
        }
        props.update(secure)
        props.update(self.extra_properties)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _hosts(self, node: KafkaNode) -> str:
        """Node ``node``'s hosts file (``peer_proxy_for``): own names on 127.0.0.1, peers on their pair address."""
        lines = [f"127.0.0.1 localhost {socket.gethostname()}"]
        for other in self.nodes:
            ip = "127.0.0.1" if other is node else peer_address(node.node_id, other.node_id)
            lines.append(f"{ip} {' '.join(peer_host(other.node_id, listener) for listener in PEER_LISTENERS)}")
        return "\n".join(lines) + "\n"

    def _prepare(self, node: KafkaNode, libs: Path, java: str) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True)
        props = node.workdir / "server.properties"
        props.write_text(self._properties(node))
        log4j = node.workdir / "log4j2.xml"
        log4j.write_text(_LOG4J2_XML.format(log=node.log_file))
        resolver: list[str] = []
        if self.peer_proxied:
            hosts = node.workdir / "hosts"
            hosts.write_text(self._hosts(node))
            resolver = [f"-Djdk.net.hosts.file={hosts}"]  # the JVM then resolves names from this file only
        base = [java, *JVM_OPTS, *resolver, f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={node.workdir}", "-cp", f"{libs}/*"]
        # --cluster-id=ID, not -t ID: a random id may begin with "-" and be taken for an option
        fmt = subprocess.run([*base, "kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                              "-c", str(props),
                              "--ignore-formatted", *scram_format_args(self.sasl_users)],
                             capture_output=True, text=True)
        if fmt.returncode != 0:
            output = f"{fmt.stdout}{fmt.stderr}"
            for password in self.sasl_users.values():
                output = output.replace(password, "***")
            raise KafkaUnavailable(f"formatting storage of node {node.node_id} failed:\n{output}")
        node._cmd = [*base, "kafka.Kafka", str(props)]

    def start(self, timeout: float = 120.0) -> LocalKafkaCluster:
        """Format, start every node and wait until the cluster is usable; raise with log tails if not."""
        if self._started:
            return self
        libs = ensure_kafka_libs(self.version)
        java = java_executable()
        _LIVE.add(self)
        self._started = True
        try:
            if self.security == "sasl_ssl" and self.tls is None:
                self.tls = make_tls_material(self.workdir / "tls", java=java)
            for node in self.nodes:
                self._prepare(node, libs, java)
            for node in self.nodes:
                node.start()
            self.wait_ready(timeout)
        except BaseException as exc:
            tails = "\n".join(n.log_tail() for n in self.nodes)
            self.stop()
            raise KafkaUnavailable(
                f"local Kafka ({self.size} node(s)) did not become ready ({exc!r}):\n{tails}") from None
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every running node is in the metadata and a topic with full replication is created."""
        from confluent_kafka.admin import AdminClient, NewTopic

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        running = {n.node_id for n in self.nodes if n.is_running()}
        last: object = None
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.process is not None and n.process.poll() is not None:
                    raise KafkaUnavailable(f"node {n.node_id} exited with code {n.process.returncode}")
            try:
                md = admin.list_topics(timeout=2)
                if running <= set(md.brokers):
                    name = f"__streamguard_ready_{uuid.uuid4().hex[:8]}"
                    rf = min(len(running), self.size)
                    fut = admin.create_topics([NewTopic(name, 1, rf)], operation_timeout=10)[name]
                    fut.result(timeout=15)
                    admin.delete_topics([name])
                    return
            except Exception as exc:  # the cluster is still booting
                last = exc
            time.sleep(0.5)
        raise KafkaUnavailable(f"cluster not ready after {timeout:.0f}s (last error: {last})")

    def heal(self, timeout: float = 120.0) -> None:
        """Undo node faults: resume paused nodes, start dead ones, wait until ready."""
        changed = False
        for node in self.nodes:
            if node._paused:
                node.resume()
                changed = True
            if not node.is_running():
                node.start()
                changed = True
        if changed:
            self.wait_ready(timeout)

    def stop(self) -> None:
        """Stop every node (SIGKILL: storage is throw-away) and remove the work folder if we made it."""
        for node in self.nodes:
            node.kill()
        _LIVE.discard(self)
        self._started = False
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
