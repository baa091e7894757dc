"""Child processes kept running: started, restarted with backoff, stopped in time.

Each connection has a feed process (socket → journal) and a writer process
(journal → database); the supervisor runs one :class:`Child` for each. A child
that exits on its own is restarted after a capped, jittered delay (reset once
it ran for a healthy while), so a crash loop never spins faster than its
backoff. Stopping asks first (a message on the channel), then sends SIGTERM,
then SIGKILL, each within the time it is given: a stuck child can never hold
up the collector's shutdown, and nothing it had read is lost, because the
journal on disk is the only copy that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from collector.core.backoff import full_jitter
from collector.ipc.channel import Channel
from collector.ipc.messages import Drain, Message, Spec, Stop
from collector.ipc.metrics import mark_dead
from collector.metrics import Process, SupervisorMetrics

__all__ = ["Child"]

logger = logging.getLogger(__name__)

OnMessage = Callable[["Child", Message], Awaitable[None]]


class Child:
    """One supervised child process (``python -m <module>``)."""

    def __init__(
        self,
        process: Process,
        connection: int,
        *,
        module: str,
        spec: Callable[[], Spec],
        env: dict[str, str],
        metrics: SupervisorMetrics,
        metrics_dir: Path | None,
        on_message: OnMessage | None = None,
        on_exit: Callable[[Child], None] | None = None,
        backoff: Callable[[], Iterator[float]] = lambda: full_jitter(base_s=1.0, cap_s=30.0),
        healthy_after_s: float = 60.0,
    ) -> None:
        self.process = process
        self.connection = connection
        self.name = f"{process} {connection}"
        self._module = module
        self._spec = spec
        self._env = env
        self._metrics = metrics
        self._metrics_dir = metrics_dir
        self._on_message = on_message
        self._on_exit = on_exit
        self._backoff = backoff
        self._healthy_after_s = healthy_after_s
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.stopping = False
        self.started = asyncio.Event()  # set while a process runs
        self.exits = 0
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Keep the process running until :meth:`stop`."""
        delays = self._backoff()
        while not self.stopping:
            began = time.monotonic()
            try:
                await self._run_once()
            except OSError as exc:  # could not even start it
                logger.error("%s: cannot start: %s", self.name, exc)
            if self.stopping:
                break
            self._metrics.process_restarts.labels(self.process, str(self.connection)).inc()
            if time.monotonic() - began >= self._healthy_after_s:
                delays = self._backoff()
            delay = next(delays)
            logger.error("%s exited (status %s); restarting in %.1fs", self.name, self._status(), delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _status(self) -> str:
        rc = self.proc.returncode if self.proc else None
        if rc is not None and rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        return str(rc)

    async def _run_once(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self._module, "--connection", str(self.connection),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=self._env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            limit=64 * 1024 * 1024,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.channel = Channel(proc.stdout, proc.stdin)
        label = (self.process, str(self.connection))
        self._metrics.process_up.labels(*label).set(1)
        self.started.set()
        logger.info("%s started (pid %d)", self.name, proc.pid)
        reader = asyncio.create_task(self._read(self.channel), name=f"{self.name} channel")
        try:
            await self.channel.send(self._spec())
            await proc.wait()
        finally:
            self.started.clear()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if proc.returncode is None:  # cancelled while it runs: never leave it behind
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            self.channel = None
            self._metrics.process_up.labels(*label).set(0)
            if self._on_exit is not None:
                self._on_exit(self)
            if self._metrics_dir is not None:
                mark_dead(proc.pid, self._metrics_dir)

    async def _read(self, channel: Channel) -> None:
        while (message := await channel.receive()) is not None:
            if self._on_message is not None:
                try:
                    await self._on_message(self, message)
                except Exception:
                    logger.exception("%s: handling %s failed", self.name, message.op)

    async def send(self, message: Message) -> None:
        """Send a message if the process runs (else it gets the news in its next spec)."""
        if self.channel is not None:
            await self.channel.send(message)

    async def stop(self, timeout_s: float, *, drain: bool = False) -> bool:
        """Ask the process to exit (``drain``: first commit its journal); SIGTERM, then SIGKILL when it takes too long.

        Returns True when it exited within ``timeout_s`` on its own.
        """
        self.stopping = True
        self._wake.set()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return True
        deadline = time.monotonic() + timeout_s
        message = Drain() if drain else Stop()
        await self.send(message)
        if await _exited(proc, deadline - time.monotonic() - min(1.0, timeout_s / 4)):
            return True
        logger.warning("%s: no exit after '%s'; sending SIGTERM", self.name, message.op)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        if await _exited(proc, deadline - time.monotonic()):
            return False
        logger.error(
            "%s: still running at the deadline; killing it (its journal keeps everything)", self.name
        )
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False


async def _exited(proc: asyncio.subprocess.Process, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(proc.wait(), max(timeout_s, 0.01))
    except TimeoutError:
        return False
    return True
