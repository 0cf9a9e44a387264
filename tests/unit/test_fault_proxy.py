"""The fault proxy against a local echo server: every toxic does what Toxiproxy's does, measured on the wire."""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from streamguard.chaos.cli import parse_attr, parse_proxy_spec, register_cli
from streamguard.chaos.proxy import FaultProxy, ProxyAPIError, ProxyClient, ProxyServer, make_toxic, parse_address

pytestmark = pytest.mark.timeout(30)


class EchoServer:
    """Echoes every byte back (optionally transformed); closes its side when the client closes its."""

    def __init__(self, transform: Callable[[bytes], bytes] = lambda b: b) -> None:
        self.transform = transform
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(self.transform(data))
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", echo.port), name="echo") as p:
        yield p


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            break
        buf += data
    return bytes(buf)


def recv_all(sock: socket.socket) -> bytes:
    buf = bytearray()
    while data := sock.recv(65536):
        buf += data
    return bytes(buf)


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    assert recv_exact(sock, len(payload)) == payload
    return time.monotonic() - started


def test_bytes_pass_through_exactly_and_are_counted(proxy: FaultProxy) -> None:
    payload = os.urandom(1 << 20)
    with connect(proxy.listen_port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exact(sock, len(payload)) == payload
        sender.join()
    stats = proxy.statistics()
    assert (stats.bytes_up, stats.bytes_down, stats.connections_total) == (len(payload), len(payload), 1)


def test_latency_delays_each_chunk_and_stops_when_removed(proxy: FaultProxy) -> None:
    with connect(proxy.listen_port) as sock:
        assert round_trip(sock) < 0.15
        proxy.add_toxic("slow", "latency", stream="downstream", latency=200, jitter=10)  # applies to a live conn
        assert round_trip(sock) >= 0.19
        proxy.add_toxic("slow-up", "latency", stream="upstream", latency=100)
        assert round_trip(sock) >= 0.29
        proxy.clear_toxics()
        assert round_trip(sock) < 0.15
    assert proxy.toxics() == []


def test_toxicity_zero_leaves_connections_unaffected(proxy: FaultProxy) -> None:
    proxy.add_toxic("never", "latency", latency=500, toxicity=0.0)
    with connect(proxy.listen_port) as sock:
        assert round_trip(sock) < 0.3


def test_bandwidth_caps_throughput(proxy: FaultProxy) -> None:
    proxy.add_toxic("thin", "bandwidth", rate=100)  # 100 KB/s downstream
    payload = os.urandom(50_000)
    with connect(proxy.listen_port) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        assert recv_exact(sock, len(payload)) == payload
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0, elapsed  # 50 KB at 100 KB/s is 0.5 s


def test_timeout_zero_black_holes_until_removed(proxy: FaultProxy) -> None:
    with connect(proxy.listen_port) as sock:
        assert round_trip(sock, b"a") < 0.15
        proxy.add_toxic("hole", "timeout", timeout=0)
        sock.settimeout(0.5)
        sock.sendall(b"x")
        with pytest.raises(TimeoutError):
            sock.recv(10)  # neither data nor a close: the connection hangs, held open
        proxy.remove_toxic("hole")
        sock.settimeout(5)
        sock.sendall(b"y")
        assert sock.recv(10) == b"y"  # the black-holed "x" was dropped, as in Toxiproxy


def test_timeout_positive_closes_the_connection_after_it(proxy: FaultProxy) -> None:
    with connect(proxy.listen_port) as sock:
        started = time.monotonic()
        proxy.add_toxic("cut", "timeout", timeout=200)
        sock.sendall(b"x")
        assert recv_all(sock) == b""
        assert 0.15 <= time.monotonic() - started < 2.0


def test_reset_peer_resets_the_client(proxy: FaultProxy) -> None:
    with connect(proxy.listen_port) as sock:
        assert round_trip(sock) < 0.15
        proxy.add_toxic("rst", "reset_peer", timeout=100)
        time.sleep(0.3)
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"x")
            sock.recv(10)


def test_reset_connections_resets_live_connections_only(proxy: FaultProxy) -> None:
    with connect(proxy.listen_port) as sock:
        assert round_trip(sock) < 0.15
        proxy.reset_connections()
        time.sleep(0.1)
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"x")
            sock.recv(10)
    with connect(proxy.listen_port) as sock:
        assert round_trip(sock) < 0.15


def test_limit_data_closes_after_that_many_bytes(proxy: FaultProxy) -> None:
    proxy.add_toxic("cap", "limit_data", bytes=1000)
    payload = os.urandom(5000)
    with connect(proxy.listen_port) as sock:
        sock.sendall(payload)
        assert recv_all(sock) == payload[:1000]


def test_slicer_delivers_every_byte_in_pieces(proxy: FaultProxy) -> None:
    proxy.add_toxic("slices", "slicer", average_size=100, size_variation=20, delay=5000)
    payload = os.urandom(2000)
    with connect(proxy.listen_port) as sock:
        sock.sendall(payload)
        pieces: list[bytes] = []
        while sum(map(len, pieces)) < len(payload):
            pieces.append(sock.recv(65536))
            assert pieces[-1], "closed early"
    assert b"".join(pieces) == payload
    assert len(pieces) >= 4
    assert max(map(len, pieces)) < len(payload)


def test_slow_close_delays_the_end_of_stream(proxy: FaultProxy) -> None:
    proxy.add_toxic("linger", "slow_close", delay=300)
    with connect(proxy.listen_port) as sock:
        assert round_trip(sock) < 0.15
        started = time.monotonic()
        sock.shutdown(socket.SHUT_WR)  # echo server closes in turn; the proxy holds that close back
        assert recv_all(sock) == b""
        assert 0.28 <= time.monotonic() - started < 2.0


def test_loss_delays_an_affected_chunk_like_a_retransmission(proxy: FaultProxy) -> None:
    proxy.add_toxic("lossy", "loss", percent=100)
    with connect(proxy.listen_port) as sock:
        first = round_trip(sock)
        second = round_trip(sock)
    assert 0.19 <= first < 0.35, first  # first retransmission timeout: 200 ms
    assert 0.39 <= second < 0.6, second  # consecutive loss doubles it


def test_disable_drops_and_refuses_then_enable_restores(proxy: FaultProxy) -> None:
    port = proxy.listen_port
    with connect(port) as sock:
        assert round_trip(sock) < 0.15
        proxy.disable()
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
    with pytest.raises(ConnectionRefusedError):
        connect(port, timeout=1)
    assert proxy.statistics().connections_open == 0
    proxy.enable()
    assert proxy.listen_port == port
    with connect(port) as sock:
        assert round_trip(sock) < 0.15


def test_set_upstream_redirects_new_connections(proxy: FaultProxy) -> None:
    upper = EchoServer(transform=bytes.upper)
    try:
        with connect(proxy.listen_port) as old:
            assert round_trip(old, b"abc") < 0.15  # proxied (its upstream chosen) before the switch
            proxy.set_upstream("127.0.0.1", upper.port)
            assert proxy.upstream == ("127.0.0.1", upper.port)
            with connect(proxy.listen_port) as new:
                new.sendall(b"abc")
                assert recv_exact(new, 3) == b"ABC"
            old.sendall(b"abc")
            assert recv_exact(old, 3) == b"abc"  # a live connection keeps its peer
    finally:
        upper.close()


def test_unreachable_upstream_closes_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        dead_port = reserved.getsockname()[1]
    with FaultProxy(("127.0.0.1", dead_port)) as p, connect(p.listen_port) as sock:
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "latnecy"}, "unknown toxic type 'latnecy'"),
    ({"kind": "latency", "delay": 5}, "unknown attribute(s) delay for toxic type 'latency'"),
    ({"kind": "latency", "stream": "sideways"}, "unknown stream 'sideways'"),
    ({"kind": "latency", "toxicity": 1.5}, "toxicity must be a number in [0, 1]"),
    ({"kind": "latency", "latency": -1}, "must be a non-negative number"),
    ({"kind": "loss", "percent": 101}, "must be <= 100"),
])
def test_invalid_toxics_are_rejected_with_a_clear_message(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        make_toxic("t", **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_duplicate_and_missing_toxic_names(proxy: FaultProxy) -> None:
    proxy.add_toxic("a", "latency", latency=1)
    with pytest.raises(ValueError, match="already exists"):
        proxy.add_toxic("a", "bandwidth", rate=1)
    with pytest.raises(KeyError):
        proxy.remove_toxic("nope")
    assert proxy.toxics() == [{"name": "a", "type": "latency", "stream": "downstream", "toxicity": 1.0,
                               "attributes": {"latency": 1, "jitter": 0}}]


def test_parse_address() -> None:
    assert parse_address("10.0.0.1:9092") == ("10.0.0.1", 9092)
    assert parse_address("9092") == ("127.0.0.1", 9092)
    with pytest.raises(ValueError):
        parse_address("host:port")


@pytest.fixture
def control(echo: EchoServer) -> Iterator[tuple[ProxyServer, ProxyClient]]:
    with ProxyServer(("127.0.0.1", 0)) as server:
        yield server, ProxyClient(server.url)


def test_http_api_creates_proxies_and_drives_toxics(echo: EchoServer,
                                                    control: tuple[ProxyServer, ProxyClient]) -> None:
    server, client = control
    created = client.create_proxy("broker-1", "127.0.0.1:0", f"127.0.0.1:{echo.port}")
    port = parse_address(created["listen"])[1]
    assert created["enabled"] is True and port > 0
    assert list(client.proxies()) == ["broker-1"]

    toxic = client.add_toxic("broker-1", "slow", "latency", stream="downstream", latency=200)
    assert toxic == {"name": "slow", "type": "latency", "stream": "downstream", "toxicity": 1.0,
                     "attributes": {"latency": 200, "jitter": 0}}
    with connect(port) as sock:
        assert round_trip(sock) >= 0.19
        client.remove_toxic("broker-1", "slow")
        assert round_trip(sock) < 0.15
    assert client.toxics("broker-1") == []

    assert client.disable("broker-1")["enabled"] is False
    with pytest.raises(ConnectionRefusedError):
        connect(port, timeout=1)
    client.enable("broker-1")
    with connect(port) as sock:
        assert round_trip(sock) < 0.15

    with pytest.raises(ProxyAPIError) as bad:
        client.add_toxic("broker-1", "x", "latnecy")
    assert bad.value.status == 400 and "unknown toxic type" in bad.value.message
    with pytest.raises(ProxyAPIError) as missing:
        client.remove_toxic("nobody", "x")
    assert missing.value.status == 404
    with pytest.raises(ProxyAPIError) as dup:
        client.create_proxy("broker-1", "127.0.0.1:0", f"127.0.0.1:{echo.port}")
    assert dup.value.status == 400

    client.add_toxic("broker-1", "hole", "timeout", stream="upstream")
    client.disable("broker-1")
    client.reset()
    assert server.proxy("broker-1").enabled and server.proxy("broker-1").toxics() == []


def test_cli_verbs_drive_a_running_control_plane(echo: EchoServer, control: tuple[ProxyServer, ProxyClient],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = control
    server.add_proxy("b1", ("127.0.0.1", 0), ("127.0.0.1", echo.port))
    parser = argparse.ArgumentParser(prog="streamguard chaos")
    register_cli(parser.add_subparsers(dest="chaos_cmd", required=True))
    api = ["--api", server.url]

    def run(*argv: str) -> int:
        args = parser.parse_args([*argv, *api])
        return int(args.func(args))

    assert run("proxy", "add-toxic", "b1", "slow", "--type", "latency", "--stream", "upstream",
               "--attr", "latency=200", "--attr", "jitter=50", "--toxicity", "0.5") == 0
    assert server.proxy("b1").toxics() == [{"name": "slow", "type": "latency", "stream": "upstream",
                                            "toxicity": 0.5, "attributes": {"latency": 200, "jitter": 50}}]
    assert run("proxy", "list") == 0
    assert "slow(latency/upstream)" in capsys.readouterr().out
    assert run("proxy", "remove-toxic", "b1", "slow") == 0
    assert server.proxy("b1").toxics() == []
    assert run("proxy", "down", "b1") == 0
    assert not server.proxy("b1").enabled
    assert run("proxy", "up", "b1") == 0
    assert server.proxy("b1").enabled
    assert run("proxy", "remove-toxic", "b1", "ghost") == 1
    assert "404" in capsys.readouterr().err


def test_cli_argument_parsers() -> None:
    assert parse_proxy_spec("b1=19092:127.0.0.1:9092") == ("b1", ("127.0.0.1", 19092), ("127.0.0.1", 9092))
    assert parse_attr("latency=200") == ("latency", 200)
    assert parse_attr("rate=1.5") == ("rate", 1.5)
    for bad in ("b1", "b1=19092:9092", "=1:h:2", "b1=x:h:2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_proxy_spec(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_attr("latency=fast")
