"""What every child process does before its own work, and how it ends.

A child (``python -m collector.feed.process`` or ``collector.writer.process``)
dies with its supervisor (``PR_SET_PDEATHSIG``, and the end of its stdin), so
a killed collector never leaves a stray writer on a journal. It ignores
SIGINT (a terminal's Ctrl-C reaches the supervisor, which orchestrates the
shutdown) and treats SIGTERM as "stop now". Its first stdin line is its spec.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from collector.exceptions import CollectorError, ConfigError
from collector.ipc.channel import Channel, stdio_channel
from collector.ipc.messages import FeedSpec, WriterSpec
from collector.ipc.metrics import use_multiprocess

__all__ = ["run_child"]

logger = logging.getLogger(__name__)

S = TypeVar("S", FeedSpec, WriterSpec)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the end of stdin still stops us
        return
    if os.getppid() == 1:
        os._exit(1)  # the supervisor died before we could ask


def run_child(
    name: str, spec_type: type[S], main: Callable[[S, Channel, asyncio.Event], Awaitable[int]]
) -> None:
    """Run ``main(spec, channel, stop)`` as a child process named ``name`` (for logs); exit with its status.

    The first line of stdin must be a ``spec_type``.
    """
    _die_with_parent()
    # A writer holds a batch of tens of thousands of ticks (tuples of lists and
    # datetimes) that never form reference cycles; Python's default collector
    # thresholds make it walk all of them again and again, which more than
    # doubled the cost of decoding (31 against 13 us a tick, profiled with py-spy).
    # Collect young objects rarely and the old generations more rarely still.
    gc.freeze()  # what start-up made lives as long as the process
    gc.set_threshold(100_000, 50, 100)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(asyncio.run(_run(name, spec_type, main)))


async def _run(
    name: str, spec_type: type[S], main: Callable[[S, Channel, asyncio.Event], Awaitable[int]]
) -> int:
    channel = await stdio_channel()
    spec = await channel.receive()
    if not isinstance(spec, spec_type):
        return 1  # the supervisor went away before saying what to do
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if spec.metrics_dir:
        use_multiprocess(Path(spec.metrics_dir))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        return await main(spec, channel, stop)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except CollectorError as exc:
        logger.error("%s", exc)
        return 1
