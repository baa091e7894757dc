"""Minutes of feed faults against a running collector, watched by a real Prometheus.

One collector streams from the simulator while the simulator drops it, stalls
with and without pings, sends garbage, oversized frames and text errors,
refuses authorize with 401 (until the token file changes), 403 and 429 storms
with Retry-After, closes and reopens the market, and accepts a connection
without ever answering the handshake. After each fault the collector must
stream again, the fault must be counted in its metrics, and where an alert
watches it, the alert's expression must become true in Prometheus. It must
never crash-loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from collector.supervisor.upstox import AUTHORIZE_LIMITS
from tests.support.db import Server
from tests.support.paths import ROOT
from tests.support.process import counts_by_instrument
from tests.support.stack import Stack
from tests.support.waiting import wait

RULES = ROOT / "prometheus" / "rules" / "collector.yml"


def alert_expr(name: str) -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return next(r["expr"] for g in groups for r in g["rules"] if r.get("alert") == name)


@pytest.fixture
def stack(single_migrated: str, tmp_path: Path) -> Iterator[Stack]:
    token_file = tmp_path / "token"
    s = Stack(
        single_migrated,
        tmp_path,
        env={
            "COLLECTOR_UPSTOX_TOKEN_FILE": str(token_file),
            "COLLECTOR_TOKEN_RETRY_S": "4",
            "COLLECTOR_RATE_LIMIT_RETRY_S": "1",
            "COLLECTOR_OPEN_TIMEOUT_S": "3",
            "COLLECTOR_PING_INTERVAL_S": "1",
            "COLLECTOR_PING_TIMEOUT_S": "2",
            "COLLECTOR_STALL_TIMEOUT_S": "2",
        },
        rate=2000,
    )
    s.token_file = token_file  # type: ignore[attr-defined]
    try:
        s.start(before=lambda sim: token_file.write_text(sim.token + "\n"))
        wait(lambda: s.metric("collector_rows_written_total", table="ticks") > 2000, 90, "ticks")
        s.start_prometheus()
        wait(lambda: bool(s.query('up{job="collector"} == 1')), 30, "Prometheus scraping")
        yield s
    finally:
        s.close()


def test_minutes_of_feed_faults(single_tsdb: Server, stack: Stack, figures: Callable[[str], None]) -> None:
    s = stack
    assert s.sim is not None
    sim = s.sim
    m = s.metric
    seen: list[str] = []

    def streaming(what: str, timeout_s: float = 60) -> float:
        """Both connections up and ticks committed again; returns how long it took."""
        rows = m("collector_rows_written_total", table="ticks")
        took = wait(
            lambda: m("collector_feed_connected") == 2 and m("collector_rows_written_total", table="ticks") > rows + 200,
            timeout_s, f"streaming again after {what}",
        )  # fmt: skip
        seen.append(f"{what}: streaming again in {took:.1f} s")
        return took

    # Drops every few seconds, with every kind of close.
    reconnects = m("collector_feed_reconnects_total")
    for code in (1006, 1011, 1000, 4001, 1006, 1001):
        s.call(sim.drop(code))
        time.sleep(3)
    streaming("6 drops, 3 s apart")
    assert m("collector_feed_reconnects_total") >= reconnects + 12  # two connections each time

    # A stall that still answers pings: kept. One that does not: replaced.
    pongs, reconnects = m("collector_feed_liveness_pongs_total"), m("collector_feed_reconnects_total")
    s.call(_run(sim.stall, pings=True))
    wait(lambda: m("collector_feed_liveness_pongs_total") >= pongs + 2, 30, "liveness pongs")
    assert m("collector_feed_reconnects_total") == reconnects
    s.call(_run(sim.resume))
    s.call(_run(sim.stall, pings=False))
    wait(lambda: m("collector_feed_reconnects_total") >= reconnects + 2, 30, "the silent sockets replaced")
    s.call(_run(sim.resume))
    streaming("stalls with and without pings")

    # Garbage, an oversized frame and a server message.
    dead = m("collector_dead_letter_rows_total")
    for _ in range(3):
        s.call(sim.send_garbage(64))
    s.call(sim.send_text())
    wait(
        lambda: m("collector_decode_errors_total") >= 1 and m("collector_text_messages_total") >= 2,
        30,
        "counted",
    )
    wait(lambda: m("collector_dead_letter_rows_total") > dead, 30, "undecodable frames kept as dead letters")
    wait(lambda: bool(s.query(alert_expr("CollectorDeadLetters"))), 30, "CollectorDeadLetters true")
    reconnects = m("collector_feed_reconnects_total")
    s.call(sim.send_garbage(17 * 1024 * 1024))  # over the 16 MiB frame limit
    wait(
        lambda: m("collector_feed_reconnects_total") >= reconnects + 2,
        30,
        "oversized frames closed the sockets",
    )
    streaming("garbage, oversized and text frames")

    # 401 until the token file changes; the disconnect alert's expression turns true meanwhile.
    s.token_file.write_text("a-revoked-token\n")  # type: ignore[attr-defined]
    failures = m("collector_feed_connect_failures_total", reason="401")
    s.call(sim.drop(1006))
    wait(lambda: m("collector_feed_connect_failures_total", reason="401") >= failures + 2, 30, "401s")
    wait(lambda: bool(s.query(alert_expr("CollectorFeedDisconnected"))), 60, "CollectorFeedDisconnected true")
    s.token_file.write_text(sim.token + "\n")  # type: ignore[attr-defined]
    streaming("401 until the token file changed")

    # 403s, then a storm of 429s with Retry-After, each honoured.
    before = {r: m("collector_feed_connect_failures_total", reason=r) for r in ("403", "429")}
    sim.fail_authorize(403, count=3)
    s.call(sim.drop(1006))
    streaming("3 authorize 403s")
    sim.fail_authorize(429, count=6, retry_after_s=1.5)
    calls0 = sim.authorize_calls
    started = time.monotonic()
    s.call(sim.drop(1006))
    streaming("a storm of 6 429s with Retry-After 1.5 s")
    storm_s = time.monotonic() - started
    assert m("collector_feed_connect_failures_total", reason="403") == before["403"] + 3
    assert m("collector_feed_connect_failures_total", reason="429") == before["429"] + 6
    # Two connections shared six refusals: each waited its Retry-After before asking again.
    assert storm_s >= 3 * 1.5 and sim.authorize_calls - calls0 == 8

    # The market closes: silence is normal, nothing is pinged or replaced, the alert stays quiet.
    pings, reconnects = m("collector_feed_liveness_pings_total"), m("collector_feed_reconnects_total")
    s.call(sim.set_market(dict.fromkeys(("NSE_FO", "NSE_EQ", "NSE_INDEX"), "NORMAL_CLOSE")))
    wait(lambda: m("collector_market_open", segment="NSE_FO") == 0, 30, "the closed status")
    time.sleep(6)
    assert (
        m("collector_feed_liveness_pings_total") == pings
        and m("collector_feed_reconnects_total") == reconnects
    )
    assert not s.query(alert_expr("CollectorFeedDisconnected"))
    s.call(sim.set_market(dict.fromkeys(("NSE_FO", "NSE_EQ", "NSE_INDEX"), "NORMAL_OPEN")))
    streaming("the market closed for 6 s and reopened")

    # A server that takes the TCP connection and never answers the handshake.
    network = m("collector_feed_connect_failures_total", reason="network")
    sim.hang_handshake(count=2)
    s.call(sim.drop(1006))
    wait(
        lambda: m("collector_feed_connect_failures_total", reason="network") >= network + 2,
        60,
        "handshake timeouts",
    )
    streaming("2 handshakes that never answered")

    # Through all of it: no process crashed, nothing was stored twice, reconnects were paced.
    assert m("collector_process_restarts_total") == 0
    # The limiter counts a call when it leaves, the simulator when it arrives: one can cross a window edge.
    (per_s, _), (per_min, _), _ = AUTHORIZE_LIMITS
    assert sim.rest.max_in_window(1.0, "authorize") <= per_s + 1
    assert sim.rest.max_in_window(60.0, "authorize") <= per_min + 1

    async def duplicates() -> int:
        got = await counts_by_instrument(s.dsn)
        return sum(n - d for n, d in got.values())

    assert s.call(duplicates()) == 0
    figures(
        "; ".join(seen) + f"; 0 process restarts, 0 duplicates; authorize calls: at most "
        f"{sim.rest.max_in_window(1.0, 'authorize')} in any second, {sim.rest.max_in_window(60.0, 'authorize')} in any minute"
    )


async def _run(fn: Callable[..., object], **kw: object) -> None:
    fn(**kw)
