"""``collector replay``: its options, and the run from the database to the socket."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
from typing import Any

from prometheus_client import CollectorRegistry

from collector.core.span import FORMS, SpanError, parse_span, show
from collector.exceptions import ConfigError, UsageError
from collector.settings import Settings

__all__ = ["add_parser", "replay"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8701
DEFAULT_METRICS_PORT = 9109


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "replay",
        help="serve a recorded span over the Upstox V3 feed protocol",
        description="Serve what COLLECTOR_DATABASE_URL recorded between --from and --to over the Upstox V3 "
        "feed protocol: the authorize endpoint, the direct /v3/feed/market-data-feed path, the socket. "
        "Point a collector (COLLECTOR_UPSTOX_API_URL) or any V3 client at it. See docs/replay.md.",
    )
    p.add_argument("--from", dest="start", required=True, metavar="TIME", help=f"start of the span: {FORMS}")
    p.add_argument(
        "--to", dest="end", required=True, metavar="TIME", help="end of the span (excluded), as --from"
    )
    p.add_argument(
        "--speed", default="1", metavar="N|max",
        help="1 = as recorded (real time), N = N times faster, max = as fast as the clients read (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--keys", action="append", metavar="KEY[,KEY...]",
        help="offer only these instrument keys (repeatable; default: every key recorded in the span)",
    )  # fmt: skip
    p.add_argument(
        "--clients", type=int, default=1, metavar="N",
        help="start the clock once N sockets have subscribed (default 1)",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    p.add_argument(
        "--token", default=os.environ.get("COLLECTOR_REPLAY_TOKEN", "replay-token"),
        help="the Bearer token clients must send (default: $COLLECTOR_REPLAY_TOKEN or replay-token)",
    )  # fmt: skip
    p.add_argument("--max-connections", type=int, default=5, help="sockets at once (default 5)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve https/wss")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
        help=f"serve /metrics on --host at this port, 0 for none (default {DEFAULT_METRICS_PORT})",
    )  # fmt: skip


def _keys(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    keys = [k.strip() for value in values for k in value.split(",") if k.strip()]
    for key in keys:
        segment, bar, identifier = key.partition("|")
        if not (segment and bar and identifier):
            raise UsageError(f"--keys: {key!r} is not an instrument key (SEGMENT|identifier)")
    return keys


async def replay(args: argparse.Namespace, settings: Settings, stop: asyncio.Event) -> None:
    """Serve the span until ``stop`` is set; raises UsageError for input that cannot work."""
    from collector.db.connect import connect
    from collector.metrics import ReplayMetrics
    from collector.replay.clock import parse_speed
    from collector.replay.recording import NothingRecorded, Recording, UnknownKeys
    from collector.replay.server import ReplayServer
    from collector.supervisor.serving import serve_metrics

    try:
        start, end = parse_span(args.start, args.end)
        speed = parse_speed(args.speed)
    except (SpanError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    keys = _keys(args.keys)
    if args.clients < 1:
        raise UsageError("--clients: at least 1")
    for option, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if not 0 <= port <= 65535:
            raise UsageError(f"{option}: {port} is not a port (0-65535)")
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--tls-cert/--tls-key: {exc}") from None

    conn = await connect(settings.database_url.get_secret_value(), timeout=10, command_timeout=None)
    try:
        try:
            recording = await Recording.open(conn, start, end, keys)
        except NothingRecorded:
            raise UsageError(f"nothing was recorded from {show(start)} to {show(end)}") from None
        except UnknownKeys as exc:
            raise UsageError(f"--keys: not recorded in the span: {exc}") from None
        registry = CollectorRegistry()
        metrics = ReplayMetrics(registry)
        server = ReplayServer(
            recording, speed=speed, metrics=metrics, token=args.token, host=args.host, port=args.port,
            ssl_context=context, wait_clients=args.clients, max_connections=args.max_connections,
        )  # fmt: skip
        http = None
        try:
            try:
                await server.start()
            except OSError as exc:
                raise UsageError(
                    f"--port: cannot listen on {args.host}:{args.port}: {exc.strerror}"
                ) from None
            # /metrics second: once it answers (with the span), the feed port is listening too.
            if args.metrics_port:
                try:
                    http = serve_metrics(registry, args.host, args.metrics_port)
                except ConfigError as exc:
                    raise UsageError(f"--metrics-port: {str(exc).partition(': ')[2]}") from None
            print(f"replay: COLLECTOR_UPSTOX_API_URL={server.url}", flush=True)
            done = asyncio.create_task(server.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if done.done():
                done.result()  # a failed timeline (the database went away) ends the replay
                await stop.wait()
            done.cancel()
            stopped.cancel()
        finally:
            await server.close()
            if http is not None:
                http.shutdown()
                http.server_close()
    finally:
        await conn.close()
