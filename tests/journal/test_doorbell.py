"""The journal's doorbell: a ring wakes a waiter, rings before a wait are not lost, and no FIFO means polling."""

from __future__ import annotations

import asyncio
from pathlib import Path

from collector.journal.doorbell import Doorbell


async def test_a_ring_wakes_the_waiter_and_a_cleared_bell_waits(tmp_path: Path) -> None:
    feed, writer = Doorbell(tmp_path), Doorbell(tmp_path)
    assert writer.open() and feed.open()  # either side may come first; both make the FIFO if needed
    try:
        feed.ring()
        await asyncio.wait_for(writer.wait(), 5)  # rung before the wait: not lost
        writer.clear()
        waiting = asyncio.create_task(writer.wait())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # cleared: nothing to wake it
        feed.ring()
        await asyncio.wait_for(waiting, 5)
    finally:
        feed.close()
        writer.close()


async def test_rings_nobody_reads_never_block_the_feed(tmp_path: Path) -> None:
    feed = Doorbell(tmp_path)
    assert feed.open()
    try:
        for _ in range(200_000):  # far past a pipe's 64 KiB: the excess is dropped
            feed.ring()
    finally:
        feed.close()


def test_a_folder_that_cannot_hold_a_fifo_says_so(tmp_path: Path) -> None:
    (tmp_path / "doorbell").write_text("a file where the FIFO should be")
    bell = Doorbell(tmp_path)
    assert not bell.open() and not bell.available
    bell.ring()  # harmless
    bell.clear()
