"""Free TCP ports on the loopback interface, and waiting for a listener."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# Ports handed out in this test run: never the same one twice.
_GIVEN: set[int] = set()
_LOWEST = 10_000


def free_port() -> int:
    """A port nothing listens on now, for a server a test starts and binds later.

    Picked below the kernel's ephemeral range: the kernel's own picks (a server binding port 0,
    and the source port of every outgoing connection, hundreds a second when twenty collectors
    are scraped and write) come from that range, so none of them can take this port between now
    and the bind. Never the same port twice in one run.
    """
    high = _ephemeral_low() - 1
    if high - _LOWEST < 1000:  # an unusual range: fall back to the kernel's pick
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(1000):
        port = random.randint(_LOWEST, high)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise AssertionError(f"no free port found between {_LOWEST} and {high}")


def wait_port(port: int, timeout_s: float = 20) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listening on {port}")
