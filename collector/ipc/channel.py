"""JSON lines between the supervisor and a child process: the child's stdin and stdout.

The first line a child reads is its spec (what it is to do, secrets included:
they never travel in the environment, the command line or the process
title). After that, either side sends small messages; every message is a
class of :mod:`collector.ipc.messages`. A child treats the end of its stdin as
"the supervisor is gone": it stops. Children log to stderr; stdout carries
only this channel.
"""

from __future__ import annotations

import asyncio
import json
import sys

from collector.ipc.messages import Message, parse

__all__ = ["Channel", "stdio_channel"]

_LIMIT = 64 * 1024 * 1024  # a universe of keys fits in one line


class Channel:
    """Reads and writes one JSON object per line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self) -> Message | None:
        """The next message, or None when the other side closed the pipe."""
        try:
            line = await self._reader.readline()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            return None
        if not line:
            return None
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("a channel message must be a JSON object")
        return parse(data)

    async def send(self, message: Message) -> None:
        """Send one message; a closed pipe is ignored (the other side is gone)."""
        if self._writer.is_closing():
            return
        self._writer.write(json.dumps(message.to_json(), separators=(",", ":")).encode() + b"\n")
        try:
            await self._writer.drain()
        except ConnectionError:
            pass

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()


async def stdio_channel() -> Channel:
    """The child's end: its stdin and stdout as a channel."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return Channel(reader, writer)
