"""``streamguard chaos proxy ...``: run the fault proxy's control plane and drive it from a terminal.

Kept apart from ``streamguard.cli`` so the composition root only calls :func:`register_cli`; the proxy module
is stdlib-only, so importing it here costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

DEFAULT_API = "127.0.0.1:8474"
API_ENV = "STREAMGUARD_CHAOS_API"


def parse_proxy_spec(text: str) -> tuple[str, tuple[str, int], tuple[str, int]]:
    """``name=listen_port:upstream_host:upstream_port`` -> ``(name, listen, upstream)``."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"bad --proxy {text!r}: expected name=listen_port:upstream_host:upstream_port")
    try:
        listen_port, upstream_port = int(parts[0]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --proxy {text!r}: ports must be integers") from None
    return name, ("127.0.0.1", listen_port), (parts[1], upstream_port)


def parse_attr(text: str) -> tuple[str, float]:
    """``key=number`` (ints stay ints so the API echoes ``200`` rather than ``200.0``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"bad --attr {text!r}: expected key=number")
    try:
        number: float = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad --attr {text!r}: value must be a number") from None
    return key, number


def _api_url(args: argparse.Namespace) -> str:
    api = args.api or os.environ.get(API_ENV) or DEFAULT_API
    return api if api.startswith(("http://", "https://")) else f"http://{api}"


def _client(args: argparse.Namespace) -> Any:
    from streamguard.chaos.proxy import ProxyClient

    return ProxyClient(_api_url(args))


def _run_client(args: argparse.Namespace, action: Any) -> int:
    from streamguard.chaos.proxy import ProxyAPIError

    try:
        action(_client(args))
    except ProxyAPIError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"proxy API at {_api_url(args)} is unreachable: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from streamguard.chaos.proxy import ProxyServer, parse_address

    server = ProxyServer(parse_address(args.api or DEFAULT_API))
    stop = threading.Event()
    with server:
        for name, listen, upstream in args.proxy:
            proxy = server.add_proxy(name, listen, upstream)
            print(f"proxy {name}: 127.0.0.1:{proxy.listen_port} -> {upstream[0]}:{upstream[1]}", flush=True)
        print(f"API on {server.url}; Ctrl-C stops it.", flush=True)
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(0.2):
            pass
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    def action(client: Any) -> None:
        proxies = client.proxies()
        if args.json:
            print(json.dumps(proxies, indent=2))
            return
        print(f"{'NAME':<16} {'LISTEN':<22} {'UPSTREAM':<22} {'STATE':<8} TOXICS")
        for name, p in sorted(proxies.items()):
            toxics = ", ".join(f"{t['name']}({t['type']}/{t['stream']})" for t in p["toxics"]) or "-"
            state = "up" if p["enabled"] else "down"
            print(f"{name:<16} {p['listen']:<22} {p['upstream']:<22} {state:<8} {toxics}")

    return _run_client(args, action)


def _cmd_add_toxic(args: argparse.Namespace) -> int:
    attributes = dict(args.attr or [])
    return _run_client(args, lambda c: c.add_toxic(args.name, args.toxic, args.type, stream=args.stream,
                                                    toxicity=args.toxicity, **attributes))


def _cmd_remove_toxic(args: argparse.Namespace) -> int:
    return _run_client(args, lambda c: c.remove_toxic(args.name, args.toxic))


def _cmd_down(args: argparse.Namespace) -> int:
    return _run_client(args, lambda c: c.disable(args.name))


def _cmd_up(args: argparse.Namespace) -> int:
    return _run_client(args, lambda c: c.enable(args.name))


def register_cli(subparsers: Any) -> None:
    """Add ``proxy`` and its verbs to the ``chaos`` command's sub-parsers."""
    from streamguard.chaos.proxy import STREAMS, TOXIC_ATTRIBUTES

    proxy = subparsers.add_parser("proxy", help="fault-injecting TCP proxy (Toxiproxy semantics)")
    verbs = proxy.add_subparsers(dest="proxy_cmd", required=True)
    api_help = f"control API host:port (default ${API_ENV} or {DEFAULT_API})"

    serve = verbs.add_parser("serve", help="run proxies and their control API until Ctrl-C")
    serve.add_argument("--api", default=None, help=api_help)
    serve.add_argument("--proxy", action="append", type=parse_proxy_spec, default=[],
                       metavar="NAME=LISTEN_PORT:UPSTREAM_HOST:UPSTREAM_PORT", help="a proxy to create (repeatable)")
    serve.set_defaults(func=_cmd_serve)

    listing = verbs.add_parser("list", help="show proxies, their state and toxics")
    listing.add_argument("--api", default=None, help=api_help)
    listing.add_argument("--json", action="store_true", help="print the raw JSON")
    listing.set_defaults(func=_cmd_list)

    add = verbs.add_parser("add-toxic", help="add a toxic to a proxy")
    add.add_argument("name", help="proxy name")
    add.add_argument("toxic", help="toxic name (unique per proxy)")
    add.add_argument("--type", required=True, choices=sorted(TOXIC_ATTRIBUTES))
    add.add_argument("--stream", default="downstream", choices=STREAMS)
    add.add_argument("--toxicity", type=float, default=1.0, help="share of connections affected (0..1)")
    add.add_argument("--attr", action="append", type=parse_attr, metavar="KEY=NUMBER", help="toxic attribute")
    add.add_argument("--api", default=None, help=api_help)
    add.set_defaults(func=_cmd_add_toxic)

    remove = verbs.add_parser("remove-toxic", help="remove a toxic from a proxy")
    remove.add_argument("name", help="proxy name")
    remove.add_argument("toxic", help="toxic name")
    remove.add_argument("--api", default=None, help=api_help)
    remove.set_defaults(func=_cmd_remove_toxic)

    for verb, func, text in (("down", _cmd_down, "drop every connection and refuse new ones"),
                             ("up", _cmd_up, "accept connections again")):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("name", help="proxy name")
        p.add_argument("--api", default=None, help=api_help)
        p.set_defaults(func=func)
