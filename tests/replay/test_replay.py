"""``collector replay`` against a real recording: the round trip, the clock, the official SDK.

One recording serves the module: ``collector run`` streams the simulator into
database A for :data:`RECORD_S` seconds of market time, through two connections
in every mode, with sockets dropped (TCP abort and a close frame, one while
NSE_FO is closed) and segments closed, reopened and put into pre-open on the
way. Then:

- the round trip: ``collector replay --speed max`` of A's whole span feeds a
  second ``collector run`` writing database B; every tick in B equals its tick
  in A in every column but ``received_at`` (B's own receive time, by
  definition: B read the frame then), including ``volume``, which B's writer
  computes again from ``vtt``; ticks that shared a frame in A share one in B,
  in A's order; candles (``candles_1m`` to ``candles_1d``, and
  ``candles_1m_complete`` from ticks) are equal; exchange bars are equal but
  for ``updated_at`` (B's receive time again); every market status row in B
  is one of A's, and each segment goes through the same statuses;
- the clock: at ``--speed 1`` and ``--speed 10`` a client measures when each
  frame arrives against when it should, from its recorded receive time;
- the official SDK (``upstox-python-sdk``, a test dependency): its streamer,
  pointed at the replay, connects through the direct path's redirect, and its
  generated classes decode every frame to the values A holds.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import subprocess
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import connect

from collector.core.decode import decode_frame
from collector.core.records import TICK_COLUMNS
from collector.core.requests import encode_request
from collector.core.span import ist_day
from collector.simulator.server import Simulator
from tests.support.db import Server, execute, migrate_database, query
from tests.support.metrics import total
from tests.support.process import CollectorProcess
from tests.support.recorded import Recorded, ReplayProcess, record, refresh_candles

RECORD_S = float(os.environ.get("COLLECTOR_TEST_RECORD_S", "180"))
# Every column of a tick but received_at, which is the reader's own clock.
COMPARED = tuple(c for c in TICK_COLUMNS if c != "received_at")
TOLERANCE_S = 0.05  # 95% of replayed frames arrive within this of their schedule


async def script(sim: Simulator, t: float) -> None:
    """Reconnects and market status changes, at fixed points of the recording."""
    second = int(t)
    if second == int(RECORD_S * 0.15):
        await sim.drop(1006)  # TCP abort: the market trades on, the reconnect snapshot differs
    elif second == int(RECORD_S * 0.30):
        await sim.set_market({"NSE_FO": "NORMAL_CLOSE"})
    elif second == int(RECORD_S * 0.35):
        await sim.drop(1000)  # closed: nothing trades, the reconnect snapshot repeats and is dropped
    elif second == int(RECORD_S * 0.40):
        await sim.set_market({"NSE_FO": "NORMAL_OPEN"})
    elif second == int(RECORD_S * 0.55):
        await sim.set_market({"NSE_EQ": "PRE_OPEN_START", "NSE_INDEX": "PRE_OPEN_START"})
    elif second == int(RECORD_S * 0.60):
        await sim.set_market({"NSE_EQ": "NORMAL_OPEN", "NSE_INDEX": "NORMAL_OPEN"})
    elif second == int(RECORD_S * 0.80):
        await sim.drop(1006)


@pytest.fixture(scope="module")
def recorded(single_tsdb: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    with single_tsdb.new_database(migrated=True) as dsn:
        yield asyncio.run(record(dsn, tmp_path_factory.mktemp("recording"), RECORD_S, script=script))


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


# -- the round trip ---------------------------------------------------------------------


async def settled(collector: CollectorProcess, quiet_s: float = 2.0, timeout_s: float = 120) -> None:
    """Until the collector has committed all it read, and read nothing new for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = -1.0, time.monotonic()
    while True:
        await asyncio.sleep(0.2)
        assert time.monotonic() < deadline, collector.tail()
        scraped = await asyncio.to_thread(collector.scrape)
        received = sum(v for (n, _), v in scraped.items() if n == "collector_received_bytes_total")
        lag = sum(v for (n, _), v in scraped.items() if n == "collector_journal_lag_bytes")
        if received != last or lag:
            last, since = received, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


@pytest.mark.limit(900)
async def test_round_trip_at_max_speed_gives_back_every_tick_and_candle(
    recorded: Recorded, single_tsdb: Server, tmp_path: Path, figures: Any
) -> None:
    a = recorded.dsn
    name = "t_" + uuid.uuid4().hex[:12]
    await execute(single_tsdb.dsn, f"CREATE DATABASE {name}")
    b = single_tsdb.database(name)
    try:
        await migrate_database(b)
        with ReplayProcess(
            tmp_path, a, "--from", iso(recorded.start), "--to", iso(recorded.end), "--speed", "max",
        ) as replay:  # fmt: skip
            await replay.listening()
            env = {
                "COLLECTOR_DATABASE_URL": b,
                "COLLECTOR_UPSTOX_API_URL": replay.url,
                "COLLECTOR_UPSTOX_TOKEN": replay.token,
                "COLLECTOR_SUBSCRIPTIONS": json.dumps(recorded.universe),
                "COLLECTOR_CONNECTIONS": "1",
                "COLLECTOR_FLUSH_INTERVAL_S": "0.1",
            }
            with CollectorProcess(tmp_path, env) as collector:
                started = time.monotonic()
                scraped = await replay.until("collector_replay_finished", 600)
                took = time.monotonic() - started
                await settled(collector)
                rc, _ = await collector.stop()
                assert rc == 0, collector.tail()
            # Its own metrics pass Prometheus' lint, new gauges included.
            body = await asyncio.to_thread(replay.metrics_text)
            checked = await asyncio.to_thread(
                subprocess.run, ["promtool", "check", "metrics"], input=body, capture_output=True, text=True
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert await replay.stop() == 0, replay.tail()
        assert "replay reached the end of the span" in replay.tail()
        await compare(a, b)
        # The span is all of A: the replay's span gauges say what A holds.
        [held] = await query(a, "SELECT count(*) AS ticks, count(DISTINCT instrument_key) AS keys FROM ticks")
        ticks = total(scraped, "collector_replay_span_ticks")
        keys = total(scraped, "collector_replay_span_keys")
        assert (ticks, keys) == (held["ticks"], held["keys"]), (ticks, keys, dict(held))
        span = (recorded.end - recorded.start).total_seconds()
        frames = total(scraped, "collector_replay_frames_sent_total")
        figures(
            f"{ticks:.0f} ticks of {keys:.0f} keys, {span:.0f} s recorded, replayed at max into a "
            f"second collector in {took:.1f} s (shared machine); {frames:.0f} frames sent"
        )
    finally:
        await execute(single_tsdb.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def compare(a: str, b: str) -> None:
    columns = ", ".join(COMPARED)
    sql = f"SELECT {columns}, received_at FROM ticks ORDER BY instrument_key, received_at"
    ticks_a, ticks_b = await query(a, sql), await query(b, sql)
    assert len(ticks_b) == len(ticks_a), (len(ticks_a), len(ticks_b))
    assert {r["kind"] for r in ticks_a} == {"ltpc", "option_greeks", "full", "full_d30", "index"}
    assert any(r["snapshot"] for r in ticks_a), "the recording should hold reconnect snapshots"
    # A frame of A: the rows that share received_at, feed_time and snapshot.
    twins: dict[tuple[datetime, datetime, bool], set[datetime]] = defaultdict(set)
    for ra, rb in zip(ticks_a, ticks_b, strict=True):
        for column in COMPARED:
            assert _same(ra[column], rb[column]), (column, dict(ra), dict(rb))
        twins[(ra["received_at"], ra["feed_time"], ra["snapshot"])].add(rb["received_at"])
    # Ticks that shared a frame in A share one in B, and B read the frames in A's order.
    assert all(len(v) == 1 for v in twins.values())
    order = [next(iter(twins[t])) for t in sorted(twins)]
    assert order == sorted(order) and len(set(order)) == len(order)

    await refresh_candles(a)  # a no-op where candles are continuous aggregates
    await refresh_candles(b)
    for level in ("candles_1m", "candles_5m", "candles_1h", "candles_1d"):
        sql = f"SELECT * FROM {level} ORDER BY instrument_key, bucket"
        candles_a, candles_b = await query(a, sql), await query(b, sql)
        assert candles_a and [tuple(r) for r in candles_a] == [tuple(r) for r in candles_b], level
    sql = "SELECT * FROM candles_1m_complete WHERE source = 'ticks' ORDER BY instrument_key, bucket"
    assert [tuple(r) for r in await query(a, sql)] == [tuple(r) for r in await query(b, sql)]

    sql = (
        "SELECT instrument_key, interval, bar_start, open, high, low, close, volume FROM exchange_bars "
        "ORDER BY 1, 2, 3"
    )
    bars_a, bars_b = await query(a, sql), await query(b, sql)
    assert bars_a and [tuple(r) for r in bars_a] == [tuple(r) for r in bars_b]

    sql = "SELECT segment, session, status, time FROM market_status ORDER BY segment, session, time"
    status_a, status_b = await query(a, sql), await query(b, sql)
    assert {tuple(r) for r in status_b} <= {tuple(r) for r in status_a}
    assert _changes(status_a) == _changes(status_b)
    assert any(r["status"] == "NORMAL_CLOSE" for r in status_b)
    assert await query(a, "SELECT 1 FROM feed_gaps") and not await query(b, "SELECT 1 FROM feed_gaps")


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x):
        return math.isnan(y)
    return bool(x == y)


def _changes(rows: list[asyncpg.Record]) -> dict[tuple[str, str], list[str]]:
    """Each segment's statuses in time order, repeats (several connections saw the change) collapsed."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in rows:
        seq = out[(r["segment"], r["session"])]
        if not seq or seq[-1] != r["status"]:
            seq.append(r["status"])
    return dict(out)


# -- the clock --------------------------------------------------------------------------


async def authorized_url(base: str, token: str) -> str:
    def get() -> str:
        request = urllib.request.Request(
            base + "/v3/feed/market-data-feed/authorize", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(json.loads(response.read())["data"]["authorized_redirect_uri"])

    return await asyncio.to_thread(get)


async def received_at_of(dsn: str, start: datetime, end: datetime) -> dict[tuple[datetime, str], datetime]:
    """(feed_time, key) -> received_at of every tick of the span."""
    rows = await query(
        dsn,
        "SELECT feed_time, instrument_key, received_at FROM ticks WHERE received_at >= $1 AND received_at < $2",
        start,
        end,
    )
    return {(r["feed_time"], r["instrument_key"]): r["received_at"] for r in rows}


@pytest.mark.parametrize("speed", [1, 10])
@pytest.mark.limit(300)
async def test_frames_leave_on_schedule(recorded: Recorded, tmp_path: Path, speed: int, figures: Any) -> None:
    """Each frame's arrival, against its recorded receive time scaled by the speed.

    Lateness is measured at a client in this process (so it includes the
    socket and this event loop), relative to the earliest frame: 20 s of wall
    time at speed 1, as much as the recording allows (up to that) at 10, for
    half of the keys there (about 2000 ticks/s).
    The assertion is on the 95th percentile, with the tolerance docs/replay.md
    states (:data:`TOLERANCE_S`); the distribution goes to the figures.
    """
    span_s = (recorded.end - recorded.start).total_seconds()
    wall_s = min(20.0, span_s * 0.7 / speed)
    start = recorded.start + timedelta(seconds=span_s * 0.2)
    end = start + timedelta(seconds=wall_s * speed)
    # At 10x, half of each mode's keys: the whole universe ten times over is ~4000 ticks/s, which
    # the replay on this shared 2-core machine was measured to fall behind on (p95 95 ms, max 0.37 s).
    share = 1 if speed == 1 else 2
    universe = {mode: keys[::share] for mode, keys in recorded.universe.items()}
    keys = [k for mode_keys in universe.values() for k in mode_keys]
    arrivals: list[tuple[float, bytes]] = []
    with ReplayProcess(
        tmp_path, recorded.dsn, "--from", iso(start), "--to", iso(end), "--speed", str(speed),
        "--keys", ",".join(keys),
    ) as replay:  # fmt: skip
        await replay.listening()
        async with connect(await authorized_url(replay.url, replay.token), max_size=1 << 24) as ws:
            for mode, mode_keys in universe.items():
                await ws.send(encode_request("sub", mode_keys, mode))  # type: ignore[arg-type]

            async def read() -> None:
                async for message in ws:
                    assert isinstance(message, bytes)
                    arrivals.append((time.monotonic(), message))

            reader = asyncio.create_task(read())
            await replay.until("collector_replay_finished", wall_s * 3 + 30)
            await asyncio.sleep(0.5)
            reader.cancel()
        assert await replay.stop() == 0
    received = await received_at_of(recorded.dsn, start, end)
    offsets = []
    for arrived, message in arrivals:
        frame = decode_frame(message, datetime.now(UTC))
        if frame.kind != "live_feed":
            continue
        tick = frame.ticks[0]
        recorded_at = received[(tick.feed_time, tick.instrument_key)]
        offsets.append(arrived - (recorded_at - start).total_seconds() / speed)
    assert len(offsets) > 100 and len(keys) > 10
    lateness = sorted(o - min(offsets) for o in offsets)
    p50 = statistics.median(lateness)
    p95, p99 = lateness[int(len(lateness) * 0.95)], lateness[int(len(lateness) * 0.99)]
    figures(
        f"speed {speed}: {len(lateness)} frames, lateness p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {lateness[-1] * 1000:.1f} ms (shared 2-core machine)"
    )
    # The stated tolerance: 95% of frames within 50 ms of their schedule (measured p95: 2-15 ms).
    assert p95 <= TOLERANCE_S, (p50, p95, p99, lateness[-10:])


# -- the official SDK -------------------------------------------------------------------


def sdk_streamer(base_url: str, token: str, universe: dict[str, list[str]]) -> Any:
    """The official SDK's MarketDataStreamerV3, pointed at ``base_url`` (as docs/replay.md shows).

    Its feeder hard-codes wss://api.upstox.com/v3/feed/market-data-feed (the
    direct path, TLS verification off); the subclass changes that URL and
    nothing else. It keeps each frame as the SDK's generated class decodes it.
    """
    import threading

    import upstox_client
    import websocket
    from upstox_client.feeder.market_data_feeder_v3 import MarketDataFeederV3
    from upstox_client.feeder.market_data_streamer_v3 import MarketDataStreamerV3

    url = base_url.replace("http", "ws", 1) + "/v3/feed/market-data-feed"

    class ReplayFeeder(MarketDataFeederV3):  # type: ignore[misc]
        def connect(self) -> None:
            if self.ws and self.ws.sock:
                return
            headers = {"Authorization": self.api_client.configuration.auth_settings()["OAUTH2"]["value"]}
            self.ws = websocket.WebSocketApp(
                url, header=headers, on_open=self.on_open, on_message=self.on_message,
                on_error=self.on_error, on_close=self.on_close,
            )  # fmt: skip
            threading.Thread(target=self.ws.run_forever, daemon=True).start()

    class ReplayStreamer(MarketDataStreamerV3):  # type: ignore[misc]
        def __init__(self, api_client: Any) -> None:
            super().__init__(api_client)
            self.raw: list[Any] = []
            for mode, keys in universe.items():
                self.subscriptions[mode].update(keys)

        def connect(self) -> None:
            self.feeder = ReplayFeeder(
                api_client=self.api_client, on_open=self.handle_open, on_message=self.handle_message,
                on_error=self.handle_error, on_close=self.handle_close,
            )  # fmt: skip
            self.feeder.connect()

        def handle_message(self, ws: Any, message: bytes) -> None:
            self.raw.append(self.decode_protobuf(message))  # the SDK's own FeedResponse class
            super().handle_message(ws, message)

    configuration = upstox_client.Configuration()
    configuration.access_token = token
    return ReplayStreamer(upstox_client.ApiClient(configuration))


def test_both_generated_schemas_live_in_one_process() -> None:
    from upstox_client.feeder.proto import MarketDataFeedV3_pb2 as sdk

    from collector.proto import MarketDataFeedV3_pb2 as ours

    assert sdk.DESCRIPTOR.name == "MarketDataFeedV3.proto"
    assert ours.DESCRIPTOR.name == "collector/proto/MarketDataFeedV3.proto"
    assert sdk.FeedResponse.DESCRIPTOR.full_name != ours.FeedResponse.DESCRIPTOR.full_name
    msg = ours.FeedResponse(type=ours.live_feed, currentTs=5)
    msg.feeds["NSE_FO|1"].ltpc.ltq = 7
    msg.feeds["NSE_FO|1"].ltpc.cp = 2.5
    decoded = sdk.FeedResponse.FromString(msg.SerializeToString())
    assert decoded.feeds["NSE_FO|1"].ltpc.ltq == 7 and decoded.feeds["NSE_FO|1"].ltpc.cp == 2.5


def same_bars(key: str, ohlc: Any, bars: dict[tuple[str, str, datetime], asyncpg.Record]) -> int:
    """Check each OHLC bar of a feed against ``exchange_bars``; returns how many."""
    for bar in ohlc.ohlc:
        kept = bars[(key, bar.interval, datetime.fromtimestamp(bar.ts / 1000, UTC))]
        assert (bar.open, bar.high, bar.low, bar.close, bar.vol) == (
            kept["open"], kept["high"], kept["low"], kept["close"], kept["volume"],
        )  # fmt: skip
    return len(ohlc.ohlc)


@pytest.mark.limit(300)
async def test_the_official_sdk_decodes_replayed_frames_to_what_the_database_holds(
    recorded: Recorded, tmp_path: Path
) -> None:
    from google.protobuf.json_format import MessageToDict

    a = recorded.dsn
    rows = await query(a, f"SELECT {', '.join(TICK_COLUMNS)} FROM ticks")
    by_trade = {(r["instrument_key"], r["time"]): r for r in rows}
    bars = {
        (r["instrument_key"], r["interval"], r["bar_start"]): r
        for r in await query(a, "SELECT * FROM exchange_bars")
    }
    with ReplayProcess(
        tmp_path, a, "--from", iso(recorded.start), "--to", iso(recorded.end), "--speed", "max"
    ) as replay:
        await replay.listening()
        streamer = sdk_streamer(replay.url, replay.token, recorded.universe)
        dicts: list[dict[str, Any]] = []
        streamer.on("message", dicts.append)
        streamer.connect()
        try:
            scraped = await replay.until("collector_replay_finished", 240)
            feeds_sent = total(scraped, "collector_replay_feeds_sent_total")
            deadline = time.monotonic() + 60
            while sum(len(f.feeds) for f in streamer.raw) < feeds_sent:
                assert time.monotonic() < deadline, (len(streamer.raw), feeds_sent)
                await asyncio.sleep(0.2)
        finally:
            streamer.disconnect()
        assert await replay.stop() == 0, replay.tail()
    assert len(dicts) == len(streamer.raw)
    seen = checked_bars = 0
    for frame in streamer.raw:
        at = datetime.fromtimestamp(frame.currentTs / 1000, UTC)
        for key, feed in frame.feeds.items():
            which = feed.WhichOneof("FeedUnion")
            ltpc = {
                "ltpc": feed.ltpc,
                "firstLevelWithGreeks": feed.firstLevelWithGreeks.ltpc,
                "fullFeed": feed.fullFeed.marketFF.ltpc
                if feed.fullFeed.HasField("marketFF")
                else feed.fullFeed.indexFF.ltpc,
            }[which]
            trade = datetime.fromtimestamp(ltpc.ltt / 1000, UTC)
            row = by_trade[(key, trade)]
            # Sent at its recorded time, or (initial_feed) a repeated state that carries bars.
            assert row["feed_time"] == at or frame.type == 0, (key, at, dict(row))
            assert (ltpc.ltp, trade, ltpc.ltq, ltpc.cp) == (row["ltp"], row["time"], row["ltq"], row["cp"])
            if which == "firstLevelWithGreeks":
                flg = feed.firstLevelWithGreeks
                q, g = flg.firstDepth, flg.optionGreeks
                assert (
                    row["kind"] == "option_greeks" and MessageToDict(feed)["requestMode"] == "option_greeks"
                )
                assert (q.bidP, q.bidQ, q.askP, q.askQ) == (
                    row["bid_price"], row["bid_qty"], row["ask_price"], row["ask_qty"],
                )  # fmt: skip
                assert (g.delta, g.theta, g.gamma, g.vega, g.rho, flg.vtt, flg.oi, flg.iv) == (
                    row["delta"], row["theta"], row["gamma"], row["vega"], row["rho"], row["vtt"], row["oi"],
                    row["iv"],
                )  # fmt: skip
            elif which == "fullFeed" and feed.fullFeed.HasField("marketFF"):
                mff = feed.fullFeed.marketFF
                quotes = mff.marketLevel.bidAskQuote
                assert row["kind"] in ("full", "full_d30")
                assert [q.bidP for q in quotes] == row["bid_prices"] and [q.askQ for q in quotes] == row[
                    "ask_qtys"
                ]
                assert [q.bidQ for q in quotes] == row["bid_qtys"] and [q.askP for q in quotes] == row[
                    "ask_prices"
                ]
                assert (mff.atp, mff.vtt, mff.oi, mff.iv, mff.tbq, mff.tsq) == (
                    row["atp"], row["vtt"], row["oi"], row["iv"], row["tbq"], row["tsq"],
                )  # fmt: skip
                checked_bars += same_bars(key, mff.marketOHLC, bars)
            elif which == "fullFeed":
                assert row["kind"] == "index"
                checked_bars += same_bars(key, feed.fullFeed.indexFF.marketOHLC, bars)
            else:
                assert row["kind"] == "ltpc"
            seen += 1
    assert seen == feeds_sent and seen >= len(rows)
    assert checked_bars == len(bars)


# -- the recording, exported --------------------------------------------------------------


async def test_export_of_the_recording_equals_the_database(recorded: Recorded, tmp_path: Path) -> None:
    from tests.support.exported import expect_equal, run_export

    first, last = ist_day(recorded.start), ist_day(recorded.end)
    out = tmp_path / "out"
    result = run_export(
        recorded.dsn, "--from", first.isoformat(), "--to", last.isoformat(), "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    await refresh_candles(recorded.dsn)  # on the Apache build, as fresh as the collector's last refresh
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    assert await expect_equal(recorded.dsn, out, days) >= 5  # ticks, candles, bars, status changes, gaps
