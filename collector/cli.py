"""Command line: ``collector run | migrate | instruments sync | simulate | replay | export``.

Settings come from ``COLLECTOR_*`` environment variables or a ``.env`` file in
the working directory (docs/settings.md lists them). Exit status 2, with one
line naming what failed, when a command cannot do its work with what it was
given: a bad setting or argument, an instrument master that ``instruments
sync`` refuses, holds back or cannot fetch (its URL is named), a database that
does not answer at ``COLLECTOR_DATABASE_URL`` (never the password) or lacks its
migrations. Status 1 when it fails while working. The first SIGINT, SIGTERM or
SIGHUP (the terminal or SSH session went away) starts a graceful shutdown, a
second one exits at once.

Signals are handled here only. ``collector --help`` shows the paragraph above.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import math
import os
import re
import signal
import ssl
import sys
import textwrap
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from collector.core.master import MasterRejected
from collector.db.connect import TRANSIENT_ERRORS
from collector.exceptions import (
    CollectorError,
    ConfigError,
    DatabaseUnreachable,
    MasterUnreachable,
    UsageError,
)
from collector.export import command as export
from collector.replay import command as replay
from collector.settings import Settings, load_settings

__all__ = ["main"]

logger = logging.getLogger("collector")


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors are one line (its subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return port


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {low}")
        return value

    return parse


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and rate >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (ticks per second, 0 or more)")
    return rate


def _plain(text: str) -> str:
    """A docstring as a terminal shows it: no reStructuredText markup (``x``, :class:`x`)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _version() -> str:
    try:
        return version("collector")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


# The help's own words; the module docstring says the rest (exit status, signals) below the commands.
_DESCRIPTION = (
    "Stream Upstox V3 market data into TimescaleDB (collector run), and the tools around it: migrations, "
    "the instrument master, a simulator of Upstox, replay and export of what was recorded."
)


def _parser() -> argparse.ArgumentParser:
    from collector.simulator.server import MASTER_PATH

    epilog = _plain(__doc__.split("\n\n")[1]) if __doc__ else None
    p = _Parser(prog="collector", description=_DESCRIPTION, epilog=epilog)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="stream the configured universe into TimescaleDB")
    sub.add_parser("migrate", help="apply pending database migrations and exit")
    inst = sub.add_parser("instruments", help="instrument master commands")
    inst_sub = inst.add_subparsers(dest="action", required=True)
    sync = inst_sub.add_parser("sync", help="load the instrument master into the instruments table")
    sync.add_argument("--source", help="URL or file of the gzipped JSON master (default: the setting)")
    sync.add_argument(
        "--force",
        action="store_true",
        help="make this master current even if it is much smaller than the last accepted one "
        "(COLLECTOR_INSTRUMENTS_MIN_RATIO) or more than 10%% of its rows are unusable",
    )
    what = (
        "Serve a generated market over the Upstox V3 feed protocol, with the REST endpoints a collector "
        "uses (authorize, candles, holidays) and an instrument master. Point a collector at it with:"
    )
    sim = sub.add_parser(
        "simulate",
        help="serve a local Upstox V3 stand-in",
        # Raw, so that the URLs stay whole lines to copy (argparse would break them at hyphens).
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(what, 78) + "\n\n  COLLECTOR_UPSTOX_API_URL=http://HOST:PORT\n"
        "  COLLECTOR_UPSTOX_TOKEN=TOKEN\n"
        f"  COLLECTOR_INSTRUMENTS_URL=http://HOST:PORT{MASTER_PATH}",
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=_port, default=8700, help="port to listen on (default 8700)")
    sim.add_argument(
        "--token", default=os.environ.get("COLLECTOR_SIMULATOR_TOKEN", "sim-token"),
        help="the Bearer token clients must send (default: $COLLECTOR_SIMULATOR_TOKEN or sim-token)",
    )  # fmt: skip
    sim.add_argument(
        "--rate", type=_rate, default=1000.0, help="ticks per second over all connections (default 1000)"
    )
    sim.add_argument(
        "--stocks", type=_at_least(1), default=50, help="equities in the generated master (default 50)"
    )
    sim.add_argument("--max-connections", type=_at_least(1), default=2, help="sockets at once (default 2)")
    sim.add_argument(
        "--replay-states", type=_at_least(0), default=0,
        help="benchmarks: replay this many pre-built states per instrument instead of building each tick",
    )  # fmt: skip
    sim.add_argument("--tls-cert", help="PEM certificate chain: serve https/wss")
    sim.add_argument("--tls-key", help="PEM private key for --tls-cert")
    replay.add_parser(sub)
    export.add_parser(sub)
    return p


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler logs every job run at INFO; our jobs log their own state changes.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


async def _until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            logger.warning("second signal: exiting now")
            os._exit(130)
        logger.info("signal received: stopping (send again to force)")
        stop.set()

    # SIGHUP too: by default it would end the process without draining the writers.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)
    await main(stop)


async def _migrate(settings: Settings) -> None:
    from collector.db.connect import connect_once
    from collector.db.jobs import apply_retention_policy
    from collector.db.migrate import migrate

    conn = await connect_once(settings.database_url.get_secret_value())
    try:
        applied = await migrate(conn)
        await apply_retention_policy(conn, settings.retention_days)
    finally:
        await conn.close()
    print(f"applied {len(applied)} migrations" if applied else "database is up to date")


async def _sync(settings: Settings, source: str | None, force: bool) -> int:
    from collector.db.connect import connect_once
    from collector.db.instruments import read_master, store_master

    # Judge the file before connecting: a refused one never reaches the database.
    master = await asyncio.to_thread(read_master, source or settings.instruments_url, force=force)
    conn = await connect_once(settings.database_url.get_secret_value())
    try:
        load = await store_master(conn, master, min_ratio=settings.instruments_min_ratio, force=force)
    finally:
        await conn.close()
    if not load.current:
        print(f"collector: {load.describe()}", file=sys.stderr)
        return 2
    print(load.describe())
    return 0


async def _simulate(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from collector.simulator.server import Simulator

    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except OSError as exc:  # ssl.SSLError too: not a PEM certificate and key
            raise ConfigError("--tls-cert/--tls-key", f"cannot load them: {exc.strerror or exc}") from None
    sim = Simulator(
        host=args.host,
        port=args.port,
        token=args.token,
        ssl_context=context,
        rate=args.rate,
        stocks=args.stocks,
        max_connections=args.max_connections,
        replay_states=args.replay_states,
    )
    try:
        await sim.start()
    except OSError as exc:  # a port in use, an address not on this machine
        await sim.close()
        option = "--port" if exc.errno == errno.EADDRINUSE else "--host"
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(option, f"cannot listen on {args.host}:{args.port}: {why}") from None
    try:
        print(f"simulator: COLLECTOR_UPSTOX_API_URL={sim.url}", flush=True)
        await stop.wait()
    finally:
        await sim.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "simulate":
            _logging(os.environ.get("COLLECTOR_LOG_LEVEL", "INFO"))
            asyncio.run(_until_signalled(lambda stop: _simulate(args, stop)))
            return 0
        settings = load_settings()
        _logging(settings.log_level)
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "instruments":
            return asyncio.run(_sync(settings, args.source, args.force))
        elif args.command == "run":
            from collector.supervisor.supervisor import run

            asyncio.run(_until_signalled(lambda stop: run(settings, stop=stop)))
        elif args.command == "replay":
            asyncio.run(_until_signalled(lambda stop: replay.replay(args, settings, stop)))
        elif args.command == "export":
            return asyncio.run(export.export(args, settings))
    except UsageError as exc:
        print(f"collector {args.command}: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"collector: configuration error: {exc}", file=sys.stderr)
        return 2
    except MasterRejected as exc:  # bad input, like a bad setting
        print(f"collector: instrument master refused: {exc}", file=sys.stderr)
        return 2
    except MasterUnreachable as exc:
        print(f"collector: instrument master not fetched: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnreachable as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 2
    except CollectorError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1
    except TRANSIENT_ERRORS as exc:  # the database refused or went away: one line, not a traceback
        print(f"collector: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
