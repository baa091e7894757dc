"""The simulator's candles, holidays, REST faults and request counts, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from websockets.asyncio.client import connect

from collector.core.decode import decode_frame
from collector.core.gaps import parse_candles
from collector.core.records import Mode, Tick
from collector.core.requests import encode_request
from collector.core.times import IST
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.simulator.server import Simulator
from tests.support.waiting import until


async def http(sim: Simulator, path: str, token: str | None = None) -> tuple[int, dict[str, str], Any]:
    """GET ``path`` from the simulator: (status, headers, JSON body)."""

    def get() -> tuple[int, dict[str, str], Any]:
        request = urllib.request.Request(
            sim.url + path, headers={"Authorization": f"Bearer {token or sim.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), json.loads(exc.read())

    return await asyncio.to_thread(get)


def intraday(key: str) -> str:
    return "/v3/historical-candle/intraday/" + key.replace("|", "%7C").replace(" ", "%20") + "/minutes/1"


def historical(key: str, to_day: str, from_day: str) -> str:
    return f"/v3/historical-candle/{key.replace('|', '%7C')}/minutes/1/{to_day}/{from_day}"


class Listener:
    """A raw feed client that keeps every tick it decodes."""

    def __init__(self) -> None:
        self.ticks: list[Tick] = []
        self.statuses: dict[str, str] = {}

    async def run(self, sim: Simulator, keys: list[str], mode: Mode = "full") -> None:
        _, _, body = await http(sim, "/v3/feed/market-data-feed/authorize")
        async with connect(body["data"]["authorized_redirect_uri"]) as ws:
            await ws.send(encode_request("sub", keys, mode))
            async for message in ws:
                assert isinstance(message, bytes)
                frame = decode_frame(message, datetime.now(UTC))
                self.ticks.extend(frame.ticks)
                for s in frame.statuses:
                    if s.session == "normal":
                        self.statuses[s.segment] = s.status


def candles_of(ticks: list[Tick]) -> dict[tuple[str, datetime], tuple[float, float, float, float, int]]:
    """1-minute candles from trades seen as ticks (a snapshot repeats a trade: one per trade time)."""
    trades: dict[tuple[str, datetime], Tick] = {}
    for t in ticks:
        trades[(t.instrument_key, t.time)] = t
    bars: dict[tuple[str, datetime], list[Tick]] = defaultdict(list)
    for (key, when), t in sorted(trades.items()):
        bars[(key, when.replace(second=0, microsecond=0))].append(t)
    return {
        k: (
            ts[0].ltp,
            max(t.ltp for t in ts),
            min(t.ltp for t in ts),
            ts[-1].ltp,
            sum(t.ltq or 0 for t in ts),
        )
        for k, ts in bars.items()
    }


async def test_intraday_candles_are_what_the_streamed_trades_give() -> None:
    async with Simulator(rate=2000, stocks=10) as sim:
        keys = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:6]
        listener = Listener()
        task = asyncio.create_task(listener.run(sim, keys))
        try:
            await until(lambda: len(listener.ticks) > 1500, what="ticks")
            sim.rate = 0  # no more trades: the candles are final
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
        ours = candles_of(listener.ticks)
        for key in keys:
            status, _, body = await http(sim, intraday(key))
            assert status == 200
            served = parse_candles(body)
            assert [c.bucket for c in served] == sorted(
                (c.bucket for c in served), reverse=True
            )  # newest first
            got = {(key, c.bucket): (c.open, c.high, c.low, c.close, c.volume) for c in served}
            assert got and got == {k: v for k, v in ours.items() if k[0] == key}
            assert body["data"]["candles"][0][0].endswith("+05:30")


async def test_the_market_trades_unwatched_keys_without_counting_them_sent() -> None:
    async with Simulator(rate=500, stocks=10, frame_interval_s=0.02) as sim:
        keys = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:4]
        never = next(k for k in sim.market.instruments if k.startswith("NSE_EQ"))
        listener = Listener()
        task = asyncio.create_task(listener.run(sim, keys))
        await until(lambda: len(listener.ticks) > 100, what="ticks")
        task.cancel()
        await until(lambda: not sim.clients, what="client gone")
        sent = {k: v["sent"] for k, v in sim.stats()["instruments"].items()}
        ltt = {k: sim.market.instruments[k].ltt for k in keys}
        vtt = {k: sim.market.instruments[k].vtt for k in keys}
        never_ltt = sim.market.instruments[never].ltt
        await asyncio.sleep(1.0)
        # About rate / keys per key per second while nobody listens, as when streamed.
        for k in keys:
            assert sim.market.instruments[k].ltt > ltt[k] and sim.market.instruments[k].vtt > vtt[k]
        assert {k: v["sent"] for k, v in sim.stats()["instruments"].items()} == sent
        assert sim.market.instruments[never].ltt == never_ltt
        # A closed segment does not trade.
        await sim.set_market({"NSE_FO": "NORMAL_CLOSE"})
        await asyncio.sleep(0.1)
        ltt = {k: sim.market.instruments[k].ltt for k in keys}
        await asyncio.sleep(0.5)
        assert {k: sim.market.instruments[k].ltt for k in keys} == ltt


async def test_historical_candles_by_day_and_the_requests_refused() -> None:
    now = datetime.now(UTC)
    async with Simulator(
        rate=0, stocks=10, start_ms=int((now - timedelta(days=5)).timestamp() * 1000)
    ) as sim:
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        day = (now - timedelta(days=3)).astimezone(IST).replace(hour=10, minute=0, second=0, microsecond=0)
        for second in (0, 20, 40, 65):  # two minutes of trades, three days ago
            sim.market.tick(key, int((day + timedelta(seconds=second)).timestamp() * 1000))
        sim.market.tick(key, int(time.time() * 1000))  # and one today
        d = day.date().isoformat()
        status, _, body = await http(sim, historical(key, d, d))
        assert status == 200
        candles = parse_candles(body)
        assert [c.bucket for c in candles] == [day + timedelta(minutes=1), day]
        assert candles[1].volume > 0 and candles[1].open != 0
        # A range reaching today has only the earlier days: today is the intraday endpoint's.
        today = now.astimezone(IST).date().isoformat()
        status, _, body = await http(sim, historical(key, today, d))
        assert {c.bucket for c in parse_candles(body)} == {day, day + timedelta(minutes=1)}
        status, _, body = await http(sim, intraday(key))
        assert len(parse_candles(body)) == 1
        # Refused: over a month, reversed range, unknown key, other units, bad token.
        assert (await http(sim, historical(key, "2026-03-15", "2026-01-01")))[0] == 400
        assert (await http(sim, historical(key, "2026-01-01", "2026-01-15")))[0] == 400
        assert (await http(sim, intraday("NSE_FO|999999999")))[0] == 400
        assert (await http(sim, intraday(key).replace("minutes/1", "days/1")))[0] == 400
        assert (await http(sim, intraday(key), token="wrong"))[0] == 401


async def test_candle_faults_on_demand() -> None:
    async with Simulator(rate=0, stocks=5) as sim:
        a, b = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:2]
        sim.fail_candles(429, retry_after_s=2)
        status, headers, _ = await http(sim, intraday(a))
        assert status == 429 and headers["Retry-After"] == "2"
        sim.fail_candles(503, count=2)
        assert [(await http(sim, intraday(a)))[0] for _ in range(3)] == [503, 503, 200]
        sim.empty_candles(key=b)
        assert parse_candles((await http(sim, intraday(a)))[2])  # a is not b: served
        status, _, body = await http(sim, intraday(b))
        assert status == 200 and body["data"]["candles"] == []
        # The same from another process, through /simulator/fault.
        assert (await http(sim, "/simulator/fault?kind=candles&arg=500&count=2"))[0] == 200
        assert [(await http(sim, intraday(a)))[0] for _ in range(3)] == [500, 500, 200]
        await http(sim, "/simulator/fault?kind=candles&arg=429&retry_after=5")
        assert (await http(sim, intraday(a)))[1]["Retry-After"] == "5"
        await http(sim, "/simulator/fault?kind=candles&arg=empty")
        assert (await http(sim, intraday(a)))[2]["data"]["candles"] == []
        sim.fail_candles(500, count=10)
        sim.clear_faults()
        assert (await http(sim, intraday(a)))[0] == 200


async def test_holidays_are_served_and_close_the_market() -> None:
    today = datetime.now(IST).date().isoformat()
    holiday = {
        "date": today, "description": "Simulated holiday", "holiday_type": "TRADING_HOLIDAY",
        "closed_exchanges": ["NSE", "NFO", "BSE", "BFO", "CDS", "BCD", "MCX"], "open_exchanges": [],
    }  # fmt: skip
    other = {**holiday, "date": "2026-01-26"}
    async with Simulator(rate=1000, stocks=5, holidays=[holiday, other]) as sim:
        status, _, body = await http(sim, "/v2/market/holidays")
        assert status == 200 and body == {"status": "success", "data": [holiday, other]}
        assert (await http(sim, "/v2/market/holidays/2026-01-26"))[2]["data"] == [other]
        sim.fail_holidays(503)
        assert (await http(sim, "/v2/market/holidays"))[0] == 503
        keys = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:3]
        listener = Listener()
        task = asyncio.create_task(listener.run(sim, keys))
        try:
            await until(lambda: "NSE_FO" in listener.statuses, what="market_info")
            assert listener.statuses["NSE_FO"] == "NORMAL_CLOSE"
            n = len(listener.ticks)  # the snapshot
            await asyncio.sleep(0.5)
            assert len(listener.ticks) == n  # closed: nothing streams
            sim.set_holidays([other])
            await until(lambda: len(listener.ticks) > n + 50, what="ticks once it is no holiday")
            # A special session (e.g. Muhurat trading) opens it on a holiday.
            now_ms = int(time.time() * 1000)
            session = {"exchange": "NFO", "start_time": now_ms - 60_000, "end_time": now_ms + 600_000}
            sim.set_holidays([{**holiday, "open_exchanges": [session]}])
            await sim.set_market({})  # broadcast market_info again
            await asyncio.sleep(0.2)
            assert listener.statuses["NSE_FO"] == "NORMAL_OPEN"
        finally:
            task.cancel()


async def test_rest_requests_are_counted_per_window() -> None:
    async with Simulator(rate=0, stocks=5) as sim:
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        for _ in range(3):
            await http(sim, intraday(key))
        await http(sim, "/v2/market/holidays")
        await http(sim, "/v3/feed/market-data-feed/authorize")
        await http(sim, "/simulator/stats")  # not an Upstox API: not counted
        _, _, stats = await http(sim, "/simulator/stats")
        assert stats["rest_requests"] == {"candles": 3, "holidays": 1, "authorize": 1}
        assert stats["rest_max_per_window"] == {"1": 5, "60": 5, "1800": 5}
        log = sim.rest
        log.times = {"candles": [0.0, 0.5, 0.99, 1.0, 1.5, 61.2]}
        assert log.max_in_window(1.0, "candles") == 3  # 0.0, 0.5, 0.99 (1.0 starts the next second)
        assert log.max_in_window(60.0) == 5
        assert log.between(0.5, 1.5, "candles") == 4


async def test_simulator_market_info_and_snapshots_are_unchanged_by_holidays_when_none() -> None:
    async with Simulator(rate=500, stocks=5) as sim:
        keys = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:2]
        listener = Listener()
        task = asyncio.create_task(listener.run(sim, keys))
        try:
            await until(lambda: len(listener.ticks) > 20, what="ticks")
            assert listener.statuses["NSE_FO"] == pb.MarketStatus.Name(pb.NORMAL_OPEN)
            assert {t.instrument_key for t in listener.ticks if t.snapshot} == set(keys)
        finally:
            task.cancel()


def test_candle_history_is_bounded() -> None:
    from collector.simulator.market import SimMarket, generate_master

    market = SimMarket(generate_master(2), start_ms=0, history_minutes=3)
    key = next(k for k in market.instruments if k.startswith("NSE_FO"))
    for minute in range(1, 7):
        market.tick(key, minute * 60_000 + 5)
    finished = market.instruments[key].history
    assert list(finished) == [3 * 60_000, 4 * 60_000, 5 * 60_000]  # the oldest went first
    assert [c[0] for c in market.candles(key, 0, 10 * 60_000)] == [
        3 * 60_000,
        4 * 60_000,
        5 * 60_000,
        6 * 60_000,
    ]
