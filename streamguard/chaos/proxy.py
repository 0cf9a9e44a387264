"""A fault-injecting TCP proxy with Toxiproxy's semantics, driven from synchronous test code.

Why our own instead of the Toxiproxy binary: no extra download or Docker, and faults flip synchronously from
the test thread (``add_toxic`` returns once the toxic is live on every open connection).

Model (as in Toxiproxy): every accepted client connection gets its own upstream connection and two pipes,
``upstream`` (client -> server) and ``downstream`` (server -> client). A reader stamps each chunk with its
arrival time and queues it (bounded, so a stalled side back-pressures TCP instead of growing memory); a writer
passes the chunk through the toxics of that stream in the order they were added and writes what comes out.
Toxics attach to live connections when added and detach (interrupting their sleeps) when removed.
``toxicity`` is the chance that a given connection is affected, drawn once per (connection, toxic) on attach.

Toxic kinds and attributes (units as in Toxiproxy):

=============  ==========================================  =================================================
kind           attributes                                  effect
=============  ==========================================  =================================================
latency        latency (ms), jitter (ms)                   each chunk leaves ``latency +- jitter`` after arrival
bandwidth      rate (KB/s, 1 KB = 1000 B; 0 = unlimited)   paced in 100 ms slices
slicer         average_size, size_variation (B), delay µs  chunks cut into small writes with a pause between
timeout        timeout (ms)                                data is dropped; 0 = black-hole held open until the
                                                           toxic is removed, > 0 = connection closed after it
reset_peer     timeout (ms)                                after it, both sides are reset (RST, SO_LINGER 0)
limit_data     bytes                                       the connection closes once that many bytes passed
slow_close     delay (ms)                                  an end of stream is passed on only after the delay
loss           percent                                     see below
=============  ==========================================  =================================================

``loss`` emulates packet loss as TCP makes it visible: a TCP proxy cannot drop bytes without corrupting the
stream, so an affected chunk is *delayed* by a retransmission-like timeout (200 ms, doubling on consecutive
losses up to 3 s) and everything behind it waits (head-of-line blocking), exactly what a lossy link does to a
TCP connection. Like Toxiproxy, ``timeout`` *drops* the bytes it swallows, so a client that keeps a black-holed
connection after the fault usually sees a broken protocol stream -- real clients time out and reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from streamguard.errors import StreamguardError

__all__ = [
    "LOSS_FIRST_RTO_S",
    "LOSS_MAX_RTO_S",
    "STREAMS",
    "TOXIC_ATTRIBUTES",
    "FaultProxy",
    "ProxyAPIError",
    "ProxyClient",
    "ProxyServer",
    "ProxyStatistics",
    "Toxic",
    "make_toxic",
    "parse_address",
]

T = TypeVar("T")

STREAMS = ("upstream", "downstream")
#: Every toxic kind with its attributes and their defaults (Toxiproxy's names and units).
TOXIC_ATTRIBUTES: dict[str, dict[str, float]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "limit_data": {"bytes": 0},
    "slow_close": {"delay": 0},
    "loss": {"percent": 0},
}
LOSS_FIRST_RTO_S = 0.2
LOSS_MAX_RTO_S = 3.0

_READ_SIZE = 64 * 1024
_QUEUE_CHUNKS = 32  # at most ~2 MB buffered per direction per connection
_CONNECT_TIMEOUT_S = 5.0
_CALL_TIMEOUT_S = 10.0


class ProxyAPIError(StreamguardError):
    """Raised by :class:`ProxyClient` when the control API answers with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"proxy API error {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, eq=False)
class Toxic:
    """One validated fault; immutable so the loop thread and callers can share it."""

    name: str
    kind: str
    stream: str
    toxicity: float
    attributes: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Toxiproxy's JSON shape (``type`` is the kind)."""
        return {"name": self.name, "type": self.kind, "stream": self.stream, "toxicity": self.toxicity,
                "attributes": dict(self.attributes)}


def make_toxic(name: str, kind: str, *, stream: str = "downstream", toxicity: float = 1.0,
               **attributes: float) -> Toxic:
    """Validate a toxic up front so a typo fails loudly instead of silently injecting nothing."""
    if not name:
        raise ValueError("toxic name must not be empty")
    if kind not in TOXIC_ATTRIBUTES:
        raise ValueError(f"unknown toxic type {kind!r}; expected one of {', '.join(sorted(TOXIC_ATTRIBUTES))}")
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; expected 'upstream' or 'downstream'")
    if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) or not 0.0 <= toxicity <= 1.0:
        raise ValueError(f"toxicity must be a number in [0, 1], got {toxicity!r}")
    allowed = TOXIC_ATTRIBUTES[kind]
    unknown = sorted(set(attributes) - set(allowed))
    if unknown:
        raise ValueError(f"unknown attribute(s) {', '.join(unknown)} for toxic type {kind!r}; "
                         f"allowed: {', '.join(allowed)}")
    values = dict(allowed)
    for key, value in attributes.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"attribute {key!r} of toxic {name!r} must be a non-negative number, got {value!r}")
        values[key] = value
    if kind == "loss" and values["percent"] > 100:
        raise ValueError(f"attribute 'percent' of toxic {name!r} must be <= 100, got {values['percent']!r}")
    return Toxic(name=name, kind=kind, stream=stream, toxicity=float(toxicity), attributes=values)


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``host:port`` or a bare ``port`` -> ``(host, port)``; one parser for the CLI and the HTTP API."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host = default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad address {text!r}: expected host:port") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"bad address {text!r}: port out of range")
    return (host.strip("[]") or default_host, number)


@dataclass(frozen=True)
class ProxyStatistics:
    """Counters of a proxy; bytes are those that came out of the toxics and were written to the far side."""

    bytes_up: int
    bytes_down: int
    connections_open: int
    connections_total: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Chunk:
    data: bytes
    t: float  # loop time of arrival, so latency is measured from arrival and pipelines


@dataclass(eq=False)
class _Attached:
    """A toxic's state on one connection (its own counters, timers and removal signal)."""

    toxic: Toxic
    affected: bool
    removed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    passed: int = 0
    next_send: float = 0.0
    rto: float = LOSS_FIRST_RTO_S

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake as soon as the toxic is removed (removal stops the fault at once)."""
        if seconds <= 0 or self.removed.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.removed.wait(), seconds)


Emit = Callable[[bytes], Awaitable[None]]


def _set_linger_zero(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Connection:
    """One proxied client connection: two pipes and the toxics attached to it. Lives on the loop thread."""

    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        self.attached: dict[str, _Attached] = {}
        self.closed = False
        self.pipes: list[asyncio.Task[None]] = []

    def attach(self, toxic: Toxic) -> None:
        att = _Attached(toxic, affected=random.random() < toxic.toxicity)
        self.attached[toxic.name] = att
        if not att.affected:
            return
        delay = toxic.attributes.get("timeout", 0) / 1000
        if toxic.kind == "timeout" and delay > 0:
            att.tasks.append(asyncio.create_task(self._close_after(delay, "graceful")))
        elif toxic.kind == "reset_peer":
            att.tasks.append(asyncio.create_task(self._close_after(delay, "rst")))

    def detach(self, name: str) -> None:
        att = self.attached.pop(name, None)
        if att is not None:
            att.removed.set()
            for task in att.tasks:
                task.cancel()

    async def _close_after(self, delay: float, mode: str) -> None:
        await asyncio.sleep(delay)
        self.close(mode)

    def close(self, mode: str = "graceful") -> None:
        """Close both sides: ``graceful`` flushes then FINs, ``abort`` drops buffers, ``rst`` sends a reset."""
        if self.closed:
            return
        self.closed = True
        self.proxy._connections.discard(self)
        for writer in (self.client_writer, self.upstream_writer):
            if mode == "rst":
                _set_linger_zero(writer)
            if mode == "graceful":
                writer.close()
            else:
                writer.transport.abort()
        current = asyncio.current_task()
        for task in [*self.pipes, *(t for a in self.attached.values() for t in a.tasks)]:
            if task is not current:
                task.cancel()

    async def run(self) -> None:
        self.pipes = [
            asyncio.create_task(self._pipe("upstream", self.client_reader, self.upstream_writer)),
            asyncio.create_task(self._pipe("downstream", self.upstream_reader, self.client_writer)),
        ]
        await asyncio.gather(*self.pipes, return_exceptions=True)
        self.close()

    def _chain(self, stream: str) -> list[_Attached]:
        return [a for a in self.attached.values() if a.affected and a.toxic.stream == stream]

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[_Chunk | None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_READ_SIZE):
                await queue.put(_Chunk(data, loop.time()))
        except OSError:
            self.close("abort")
            return
        await queue.put(None)

    async def _pipe(self, stream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[_Chunk | None] = asyncio.Queue(_QUEUE_CHUNKS)
        pump = asyncio.create_task(self._read(reader, queue))
        try:
            while not self.closed:
                chunk = await queue.get()
                if chunk is None:
                    await self._end_of_stream(stream)
                    if not self.closed and writer.can_write_eof():
                        writer.write_eof()
                    return
                await self._stage(stream, self._chain(stream), 0, chunk, writer)
        except OSError:
            self.close("abort")
        finally:
            pump.cancel()

    async def _end_of_stream(self, stream: str) -> None:
        for att in self._chain(stream):
            if att.toxic.kind == "slow_close":
                await att.sleep(att.toxic.attributes["delay"] / 1000)
            elif att.toxic.kind == "timeout":
                await att.removed.wait()  # a black hole swallows the close too

    async def _stage(self, stream: str, chain: list[_Attached], index: int, chunk: _Chunk,
                     writer: asyncio.StreamWriter) -> None:
        if self.closed:
            return
        if index == len(chain):
            writer.write(chunk.data)
            self.proxy._count(stream, len(chunk.data))  # counted when handed to the socket, before drain
            await writer.drain()
            return

        async def emit(data: bytes) -> None:
            await self._stage(stream, chain, index + 1, _Chunk(data, chunk.t), writer)

        att = chain[index]
        if att.removed.is_set():
            await emit(chunk.data)
        else:
            await _STAGES[att.toxic.kind](self, att, chunk, emit)


async def _latency(conn: _Connection, att: _Attached, chunk: _Chunk, emit: Emit) -> None:
    attrs = att.toxic.attributes
    delay = max(0.0, attrs["latency"] + random.uniform(-attrs["jitter"], attrs["jitter"])) / 1000
    await att.sleep(chunk.t + delay - asyncio.get_running_loop().time())
    await emit(chunk.data)


async def _bandwidth(conn: _Connection, att: _Attached, chunk: _Chunk, emit: Emit) -> None:
    rate = att.toxic.attributes["rate"] * 1000  # bytes per second
    if rate <= 0:
        await emit(chunk.data)
        return
    loop = asyncio.get_running_loop()
    step = max(1, int(rate / 10))  # 100 ms worth, so pacing is smooth rather than bursty
    for start in range(0, len(chunk.data), step):
        piece = chunk.data[start:start + step]
        now = loop.time()
        att.next_send = max(now, att.next_send) + len(piece) / rate
        await att.sleep(att.next_send - now)
        await emit(piece)


async def _slicer(conn: _Connection, att: _Attached, chunk: _Chunk, emit: Emit) -> None:
    attrs = att.toxic.attributes
    average, variation, delay = int(attrs["average_size"]), int(attrs["size_variation"]), attrs["delay"] / 1e6
    if average <= 0:
        await emit(chunk.data)
        return
    data, start = chunk.data, 0
    while start < len(data):
        size = max(1, average + random.randint(-variation, variation)) if variation else average
        await emit(data[start:start + size])
        start += size
        if start < len(data):
            await att.sleep(delay)


async def _drop(conn: _Connection, att: _Attached, chunk: _Chunk, emit: Emit) -> None:
    """``timeout``: swallow the bytes (the timer set on attach closes the connection when timeout > 0)."""


async def _passthrough(conn: _Connection, att: _Attached, chunk: _Chunk, emit: Emit) -> None:
    """Toxics that act on a timer or at end of stream (reset_peer, slow_close) let data through."""
    await emit(chunk.data)


async def _limit_data(conn: _Connection, att: _Attached, chunk: _Chunk, emit: Emit) -> None:
    limit = int(att.toxic.attributes["bytes"])
    piece = chunk.data[:max(0, limit - att.passed)]
    if piece:
        att.passed += len(piece)
        await emit(piece)
    if att.passed >= limit:
        conn.close("graceful")  # graceful: the bytes already passed are still delivered


async def _loss(conn: _Connection, att: _Attached, chunk: _Chunk, emit: Emit) -> None:
    if random.random() * 100 < att.toxic.attributes["percent"]:
        await att.sleep(att.rto)
        att.rto = min(att.rto * 2, LOSS_MAX_RTO_S)
    else:
        att.rto = LOSS_FIRST_RTO_S
    await emit(chunk.data)


_STAGES: dict[str, Callable[[_Connection, _Attached, _Chunk, Emit], Awaitable[None]]] = {
    "latency": _latency,
    "bandwidth": _bandwidth,
    "slicer": _slicer,
    "timeout": _drop,
    "reset_peer": _passthrough,
    "limit_data": _limit_data,
    "slow_close": _passthrough,
    "loss": _loss,
}


class FaultProxy:
    """A TCP proxy whose asyncio loop runs in its own daemon thread; every public method is thread-safe."""

    def __init__(self, upstream: tuple[str, int], *, listen: tuple[str, int] = ("127.0.0.1", 0),
                 name: str = "proxy") -> None:
        self.name = name
        self._upstream = (upstream[0], int(upstream[1]))
        self._listen_host, self._listen_port = listen[0], int(listen[1])
        self._toxics: dict[str, Toxic] = {}
        self._connections: set[_Connection] = set()
        self._enabled = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._bytes = {"upstream": 0, "downstream": 0}
        self._connections_total = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind the listener and start the loop thread; returns self so ``FaultProxy(...).start()`` reads well."""
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"faultproxy-{self.name}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._await(self._listen_now())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every connection and the listener, then end the loop thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CALL_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CALL_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
        self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        return self._listen_port

    @property
    def listen(self) -> tuple[str, int]:
        return (self._listen_host, self._listen_port)

    @property
    def upstream(self) -> tuple[str, int]:
        return self._upstream

    @upstream.setter
    def upstream(self, address: tuple[str, int]) -> None:
        self.set_upstream(*address)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def set_upstream(self, host: str, port: int) -> None:
        """Point new connections elsewhere (e.g. a restarted broker); live connections keep their peer."""
        self._upstream = (host, int(port))

    # -- toxics ----------------------------------------------------------------------------------------------

    def add_toxic(self, name: str, kind: str, *, stream: str = "downstream", toxicity: float = 1.0,
                  **attributes: float) -> None:
        """Add a toxic; it applies to live connections at once and to every new one until removed."""
        toxic = make_toxic(name, kind, stream=stream, toxicity=toxicity, **attributes)
        self._call(self._add_toxic, toxic)

    def remove_toxic(self, name: str) -> None:
        """Remove a toxic by name (``KeyError`` if absent); its delays and black holes end immediately."""
        self._call(self._remove_toxic, name)

    def clear_toxics(self) -> None:
        self._call(self._clear_toxics)

    def toxics(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in list(self._toxics.values())]

    # -- up / down -------------------------------------------------------------------------------------------

    def disable(self) -> None:
        """Take the proxy "down": drop every live connection and stop listening (new connects are refused)."""
        self._await_if_running(self._disable())
        self._enabled = False

    def enable(self) -> None:
        """Bring the proxy back up on the same port."""
        self._enabled = True
        self._await_if_running(self._enable())

    def reset_connections(self) -> None:
        """Reset (RST) every live connection; new connections are accepted as usual."""
        self._call(self._close_all, "rst")

    def statistics(self) -> ProxyStatistics:
        """A consistent snapshot, read on the loop thread so it never splits a write from its count."""
        return self._call(self._statistics)

    def _statistics(self) -> ProxyStatistics:
        return ProxyStatistics(bytes_up=self._bytes["upstream"], bytes_down=self._bytes["downstream"],
                               connections_open=len(self._connections),
                               connections_total=self._connections_total)

    def to_dict(self) -> dict[str, Any]:
        """Toxiproxy-like JSON view used by the HTTP API."""
        return {"name": self.name, "listen": f"{self._listen_host}:{self._listen_port}",
                "upstream": f"{self._upstream[0]}:{self._upstream[1]}", "enabled": self._enabled,
                "toxics": self.toxics(), "statistics": self.statistics().to_dict()}

    # -- loop-thread plumbing --------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the loop thread (tasks and connection state belong to it) and return its result."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return fn(*args)

        async def run() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(_CALL_TIMEOUT_S)

    def _await(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT_S)

    def _await_if_running(self, coro: Any) -> None:
        if self._loop is None:
            coro.close()
        else:
            self._await(coro)

    def _count(self, stream: str, n: int) -> None:
        self._bytes[stream] += n

    def _add_toxic(self, toxic: Toxic) -> None:
        if toxic.name in self._toxics:
            raise ValueError(f"toxic {toxic.name!r} already exists on proxy {self.name!r}")
        self._toxics[toxic.name] = toxic
        for conn in list(self._connections):
            conn.attach(toxic)

    def _remove_toxic(self, name: str) -> None:
        if name not in self._toxics:
            raise KeyError(f"no toxic {name!r} on proxy {self.name!r}")
        del self._toxics[name]
        for conn in list(self._connections):
            conn.detach(name)

    def _clear_toxics(self) -> None:
        for name in list(self._toxics):
            self._remove_toxic(name)

    def _close_all(self, mode: str) -> None:
        for conn in list(self._connections):
            conn.close(mode)

    async def _listen_now(self) -> None:
        server = await asyncio.start_server(self._on_client, self._listen_host, self._listen_port,
                                            reuse_address=True)
        self._server = server
        self._listen_port = server.sockets[0].getsockname()[1]

    async def _disable(self) -> None:
        self._enabled = False
        self._close_all("abort")
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _enable(self) -> None:
        self._enabled = True
        if self._server is None:
            await self._listen_now()

    async def _shutdown(self) -> None:
        await self._disable()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._enabled:
            writer.transport.abort()
            return
        self._connections_total += 1
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(*self._upstream), _CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            writer.transport.abort()  # like a dead broker: the client's connection ends at once
            return
        if not self._enabled:
            writer.transport.abort()
            upstream[1].transport.abort()
            return
        conn = _Connection(self, (reader, writer), upstream)
        self._connections.add(conn)
        for toxic in list(self._toxics.values()):
            conn.attach(toxic)
        try:
            await conn.run()
        finally:
            conn.close("abort")


# -- control plane -----------------------------------------------------------------------------------------------


class _NotFound(KeyError):
    pass


class ProxyServer:
    """Hosts named :class:`FaultProxy` objects behind a small Toxiproxy-like JSON HTTP API.

    ``GET /proxies``, ``POST /proxies {name, listen, upstream}``, ``GET|DELETE /proxies/<name>``,
    ``GET|POST /proxies/<name>/toxics``, ``DELETE /proxies/<name>/toxics/<toxic>``,
    ``POST /proxies/<name>/disable|enable|reset_connections`` and ``POST /reset`` (enable all, drop all toxics).
    """

    def __init__(self, api: tuple[str, int] = ("127.0.0.1", 8474)) -> None:
        self._api = (api[0], int(api[1]))
        self._proxies: dict[str, FaultProxy] = {}
        self._lock = threading.Lock()
        self._httpd: _ApiHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ProxyServer:
        httpd = _ApiHTTPServer(self._api, _ApiHandler)
        httpd.control = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="faultproxy-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            proxies, self._proxies = list(self._proxies.values()), {}
        for proxy in proxies:
            proxy.stop()

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api_port(self) -> int:
        return self._httpd.server_address[1] if self._httpd is not None else self._api[1]

    @property
    def url(self) -> str:
        return f"http://{self._api[0]}:{self.api_port}"

    @property
    def proxies(self) -> dict[str, FaultProxy]:
        with self._lock:
            return dict(self._proxies)

    def proxy(self, name: str) -> FaultProxy:
        with self._lock:
            try:
                return self._proxies[name]
            except KeyError:
                raise _NotFound(f"no proxy named {name!r}") from None

    def add_proxy(self, name: str, listen: tuple[str, int], upstream: tuple[str, int]) -> FaultProxy:
        """Create and start a proxy; ``ValueError`` if the name is taken."""
        with self._lock:
            if name in self._proxies:
                raise ValueError(f"proxy {name!r} already exists")
            proxy = FaultProxy(upstream, listen=listen, name=name)
            self._proxies[name] = proxy
        try:
            return proxy.start()
        except BaseException:
            with self._lock:
                self._proxies.pop(name, None)
            raise

    def remove_proxy(self, name: str) -> None:
        proxy = self.proxy(name)
        with self._lock:
            self._proxies.pop(name, None)
        proxy.stop()

    def reset(self) -> None:
        """Heal everything: every proxy enabled and without toxics (what a test does between cases)."""
        for proxy in self.proxies.values():
            proxy.clear_toxics()
            proxy.enable()

    def dispatch(self, method: str, parts: list[str], body: dict[str, Any]) -> tuple[int, Any]:
        """Route one API call; raises ``KeyError`` (404) or ``ValueError`` (400). Separate from HTTP for tests."""
        if parts in ([], ["proxies"]) and method == "GET":
            return 200, {name: p.to_dict() for name, p in self.proxies.items()}
        if parts == ["proxies"] and method == "POST":
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError("'name' is required")
            if "upstream" not in body:
                raise ValueError("'upstream' is required")
            proxy = self.add_proxy(name, parse_address(str(body.get("listen", "127.0.0.1:0"))),
                                   parse_address(str(body["upstream"])))
            return 201, proxy.to_dict()
        if parts == ["reset"] and method == "POST":
            self.reset()
            return 204, None
        if len(parts) < 2 or parts[0] != "proxies":
            raise _NotFound(f"no route {method} /{'/'.join(parts)}")
        proxy = self.proxy(parts[1])
        rest = parts[2:]
        if rest == [] and method == "GET":
            return 200, proxy.to_dict()
        if rest == [] and method == "DELETE":
            self.remove_proxy(proxy.name)
            return 204, None
        if rest == ["toxics"] and method == "GET":
            return 200, proxy.toxics()
        if rest == ["toxics"] and method == "POST":
            kind = str(body.get("type", ""))
            stream = str(body.get("stream", "downstream"))
            attributes = body.get("attributes") or {}
            if not isinstance(attributes, dict):
                raise ValueError("'attributes' must be an object")
            name = str(body.get("name") or f"{kind}_{stream}")
            proxy.add_toxic(name, kind, stream=stream, toxicity=body.get("toxicity", 1.0), **attributes)
            return 200, next(t for t in proxy.toxics() if t["name"] == name)
        if len(rest) == 2 and rest[0] == "toxics" and method == "DELETE":
            try:
                proxy.remove_toxic(rest[1])
            except KeyError as exc:
                raise _NotFound(exc.args[0]) from None
            return 204, None
        if len(rest) == 1 and method == "POST" and rest[0] in ("disable", "enable", "reset_connections"):
            getattr(proxy, rest[0])()
            return 200, proxy.to_dict()
        raise _NotFound(f"no route {method} /{'/'.join(parts)}")


class _ApiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    control: ProxyServer


class _ApiHandler(BaseHTTPRequestHandler):
    server: _ApiHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output should not fill with access logs."""

    def _handle(self, method: str) -> None:
        status: int
        payload: Any
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
            parts = [p for p in urlsplit(self.path).path.split("/") if p]
            status, payload = self.server.control.dispatch(method, parts, body)
        except KeyError as exc:
            status, payload = 404, {"error": str(exc.args[0]) if exc.args else "not found"}
        except (ValueError, TypeError) as exc:
            status, payload = 400, {"error": str(exc)}
        except Exception as exc:
            status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class ProxyClient:
    """Client of :class:`ProxyServer`'s API with the same verbs as :class:`FaultProxy`, by proxy name."""

    def __init__(self, api_url: str = "http://127.0.0.1:8474", *, timeout: float = 5.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error", raw.decode(errors="replace"))
            except ValueError:
                message = raw.decode(errors="replace")
            raise ProxyAPIError(exc.code, str(message)) from None
        return json.loads(raw) if raw else None

    @staticmethod
    def _name(name: str) -> str:
        return quote(name, safe="")

    def proxies(self) -> dict[str, dict[str, Any]]:
        return dict(self._request("GET", "/proxies"))

    def proxy(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/proxies/{self._name(name)}"))

    def create_proxy(self, name: str, listen: str, upstream: str) -> dict[str, Any]:
        return dict(self._request("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream}))

    def delete_proxy(self, name: str) -> None:
        self._request("DELETE", f"/proxies/{self._name(name)}")

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/proxies/{self._name(proxy)}/toxics"))

    def add_toxic(self, proxy: str, name: str, kind: str, *, stream: str = "downstream", toxicity: float = 1.0,
                  **attributes: float) -> dict[str, Any]:
        body = {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes}
        return dict(self._request("POST", f"/proxies/{self._name(proxy)}/toxics", body))

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._request("DELETE", f"/proxies/{self._name(proxy)}/toxics/{self._name(name)}")

    def disable(self, proxy: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/proxies/{self._name(proxy)}/disable", {}))

    def enable(self, proxy: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/proxies/{self._name(proxy)}/enable", {}))

    def reset_connections(self, proxy: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/proxies/{self._name(proxy)}/reset_connections", {}))

    def reset(self) -> None:
        self._request("POST", "/reset", {})
