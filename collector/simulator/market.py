"""The simulator's market: an instrument master and random-walk prices. No I/O.

Every live tick of an instrument carries a strictly increasing last trade
time (``ltt``, one millisecond apart at least) and, where the mode has it, a
strictly increasing cumulative volume (``vtt``). Together with the per
instrument counts in ``stats`` a test can count lost and duplicated ticks
exactly.

Every trade also lands in the instrument's 1-minute candle (``candles``):
open/close are the minute's first/last trade price, high/low its extremes,
volume the sum of its trade quantities, oi the open interest after its last
trade. That is exactly what the collector computes from the ticks of a minute
it saw completely, so a backfilled candle can be compared with ours.
"""

from __future__ import annotations

import calendar
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from collector.core.records import Mode
from collector.core.times import DAY_MS, IST_OFFSET_MS, ist_day, ist_time
from collector.proto import MarketDataFeedV3_pb2 as pb

__all__ = ["Candle", "Instrument", "SimMarket", "generate_master"]

# (minute start in epoch ms, open, high, low, close, volume, oi)
Candle = tuple[int, float, float, float, float, int, float]
INDICES = {
    # underlying symbol -> (index key name, starting level, lot size)
    "NIFTY": ("Nifty 50", 24000.0, 75),
    "BANKNIFTY": ("Nifty Bank", 52000.0, 35),
    "FINNIFTY": ("Nifty Fin Service", 23500.0, 65),
    "MIDCPNIFTY": ("NIFTY MID SELECT", 12500.0, 140),
}
STOCKS = [
    ("RELIANCE", "INE002A01018", 2900.0, 500),
    ("INFY", "INE009A01021", 1500.0, 400),
    ("TCS", "INE467B01029", 3900.0, 175),
    ("HDFCBANK", "INE040A01034", 1650.0, 550),
    ("ICICIBANK", "INE090A01021", 1250.0, 700),
    ("SBIN", "INE062A01020", 820.0, 750),
]


def _last_tuesday(year: int, month: int) -> date:
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - 1) % 7)


def _expiries(today: date, n: int) -> list[date]:
    out: list[date] = []
    year, month = today.year, today.month
    while len(out) < n:
        d = _last_tuesday(year, month)
        if d >= today:
            out.append(d)
        month += 1
        if month > 12:
            year, month = year + 1, 1
    return out


def _epoch_ms(d: date) -> int:
    # Contracts expire at 15:30 IST.
    moment = ist_time(d, time(15, 30))
    return int(moment.timestamp() * 1000)


def generate_master(stocks: int = 50, today: date | None = None, seed: int = 7) -> list[dict[str, Any]]:
    """An instrument master shaped like Upstox's ``complete.json.gz``.

    Indices, ``stocks`` equities (the first few real, the rest synthetic),
    three monthly futures per stock and per index, and options on the nearest
    expiry around the money for the indices and the first stocks.
    """
    today = today or ist_day(datetime.now(UTC))
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    token = 35000

    def base(**kw: Any) -> dict[str, Any]:
        row = dict.fromkeys(
            ("isin", "expiry", "strike_price", "weekly", "underlying_symbol", "underlying_key",
             "underlying_type", "asset_symbol", "asset_key", "asset_type"),
        )  # fmt: skip
        row.update(minimum_lot=1, freeze_quantity=None, tick_size=5.0)
        row.update(kw)
        row["short_name"] = row.get("short_name") or row["name"]
        return row

    equities = list(STOCKS)
    for i in range(len(STOCKS), stocks):
        equities.append(
            (f"STOCK{i:03d}", f"INE{i:03d}S01{i % 10}1{i % 7}", rng.uniform(50, 5000), 100 * (1 + i % 9))
        )
    equities = equities[:stocks]
    for name, (index_name, level, _) in INDICES.items():
        rows.append(base(
            segment="NSE_INDEX", name=index_name, exchange="NSE", instrument_type="INDEX",
            instrument_key=f"NSE_INDEX|{index_name}", exchange_token=name, trading_symbol=index_name,
            lot_size=1, tick_size=0.05, _price=level,
        ))  # fmt: skip
    for name, isin, price, _ in equities:
        token += 1
        rows.append(base(
            segment="NSE_EQ", name=name, exchange="NSE", isin=isin, instrument_type="EQ",
            instrument_key=f"NSE_EQ|{isin}", exchange_token=str(token), trading_symbol=name,
            lot_size=1, tick_size=0.05, _price=price,
        ))  # fmt: skip
    expiries = _expiries(today, 3)
    underlyings = [(n, f"NSE_INDEX|{v[0]}", "INDEX", v[1], v[2]) for n, v in INDICES.items()]
    underlyings += [(n, f"NSE_EQ|{isin}", "EQUITY", p, lot) for n, isin, p, lot in equities]
    for symbol, ukey, utype, price, lot in underlyings:
        common = dict(
            segment="NSE_FO", exchange="NSE", lot_size=lot, underlying_symbol=symbol, underlying_key=ukey,
            underlying_type=utype, asset_symbol=symbol, asset_key=ukey, asset_type=utype, weekly=False,
        )  # fmt: skip
        for expiry in expiries:
            token += 1
            tag = expiry.strftime("%d %b %y").upper()
            rows.append(base(
                name=symbol, instrument_type="FUT", instrument_key=f"NSE_FO|{token}",
                exchange_token=str(token), trading_symbol=f"{symbol} FUT {tag}",
                expiry=_epoch_ms(expiry), _price=price * 1.004, **common,
            ))  # fmt: skip
        if utype == "INDEX" or symbol in dict((s[0], 1) for s in STOCKS[:2]):
            step = 50.0 if price < 30000 else 100.0
            atm = round(price / step) * step
            for k in range(-2, 3):
                strike = atm + k * step
                for opt in ("CE", "PE"):
                    token += 1
                    intrinsic = max(price - strike, 0) if opt == "CE" else max(strike - price, 0)
                    rows.append(base(
                        name=symbol, instrument_type=opt, instrument_key=f"NSE_FO|{token}",
                        exchange_token=str(token),
                        trading_symbol=f"{symbol} {int(strike)} {opt} {expiries[0]:%d %b %y}".upper(),
                        expiry=_epoch_ms(expiries[0]), strike_price=strike,
                        _price=intrinsic + price * 0.01, **common,
                    ))  # fmt: skip
    for symbol, price, lot in (("CRUDEOIL", 6200.0, 100), ("GOLD", 72000.0, 1)):
        token += 1
        rows.append(base(
            segment="MCX_FO", name=symbol, exchange="MCX", instrument_type="FUT",
            instrument_key=f"MCX_FO|{400000 + token}", exchange_token=str(400000 + token),
            trading_symbol=f"{symbol} FUT {expiries[0]:%d %b %y}".upper(), lot_size=lot,
            expiry=_epoch_ms(expiries[0]), underlying_symbol=symbol, _price=price,
        ))  # fmt: skip
    return rows


@dataclass(slots=True)
class Instrument:
    """The simulated state of one instrument."""

    key: str
    is_index: bool
    is_option: bool
    lot: int
    ltp: float
    cp: float
    ltt: int = 0
    ltq: int = 0
    vtt: int = 0
    oi: float = 0.0
    day_open: float = 0.0
    day_high: float = 0.0
    day_low: float = 0.0
    bar_start: int = 0
    bar: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    bar_vol: int = 0
    sent: int = 0  # live ticks delivered to a socket
    history: dict[int, Candle] = field(default_factory=dict)  # finished minutes


class SimMarket:
    """Random-walk prices for every instrument of a master."""

    def __init__(
        self,
        master: list[dict[str, Any]],
        *,
        seed: int = 1,
        start_ms: int | None = None,
        history_minutes: int = 1440,
    ) -> None:
        self.rng = random.Random(seed)
        # Finished candles kept per instrument (the oldest go first): a simulator that runs
        # for weeks must not grow without bound; a day covers any gap a test or demo makes.
        self.history_minutes = history_minutes
        start = start_ms if start_ms is not None else int(datetime.now(UTC).timestamp() * 1000)
        self.instruments: dict[str, Instrument] = {}
        for row in master:
            price = float(row.get("_price") or 100.0)
            inst = Instrument(
                key=row["instrument_key"],
                is_index=row["instrument_type"] == "INDEX",
                is_option=row["instrument_type"] in ("CE", "PE"),
                lot=int(row.get("lot_size") or 1),
                ltp=round(price, 2),
                cp=round(price, 2),
            )
            self._trade(inst, start, first=True)
            self.instruments[inst.key] = inst

    def _trade(self, inst: Instrument, now_ms: int, first: bool = False) -> None:
        if not first:
            step = inst.ltp * 0.0005 * self.rng.gauss(0.0, 1.0)
            inst.ltp = max(round(inst.ltp + step, 2), 0.05)
        # Strictly increasing trade time: the per-instrument sequence.
        inst.ltt = max(now_ms, inst.ltt + 1)
        minute = inst.ltt - inst.ltt % 60000
        if minute != inst.bar_start and not first:
            # The minute is over: keep its candle (oi as its last trade left it).
            o, h, lo, c = inst.bar
            inst.history[inst.bar_start] = (inst.bar_start, o, h, lo, c, inst.bar_vol, inst.oi)
            if len(inst.history) > self.history_minutes:
                del inst.history[next(iter(inst.history))]
        if inst.is_index:
            inst.ltq = 0
        else:
            inst.ltq = inst.lot * self.rng.randint(1, 10)
            inst.vtt += inst.ltq
            inst.oi = max(inst.oi + self.rng.randint(-5, 5) * inst.lot, 0.0)
        if first:
            inst.day_open = inst.day_high = inst.day_low = inst.ltp
        inst.day_high = max(inst.day_high, inst.ltp)
        inst.day_low = min(inst.day_low, inst.ltp)
        if minute != inst.bar_start:
            inst.bar_start = minute
            inst.bar = [inst.ltp, inst.ltp, inst.ltp, inst.ltp]
            inst.bar_vol = 0
        bar = inst.bar
        bar[1] = max(bar[1], inst.ltp)
        bar[2] = min(bar[2], inst.ltp)
        bar[3] = inst.ltp
        inst.bar_vol += inst.ltq

    def tick(self, key: str, now_ms: int) -> Instrument:
        """Advance one instrument by one trade."""
        inst = self.instruments[key]
        self._trade(inst, now_ms)
        return inst

    def candles(self, key: str, start_ms: int, end_ms: int) -> list[Candle]:
        """1-minute candles of ``key`` starting in [start_ms, end_ms), oldest first.

        Minutes without a trade have no candle. The current minute's candle is
        included as it stands (it changes until the minute is over).
        """
        inst = self.instruments[key]
        out = [c for m, c in inst.history.items() if start_ms <= m < end_ms]
        if start_ms <= inst.bar_start < end_ms:
            o, h, lo, c = inst.bar
            out.append((inst.bar_start, o, h, lo, c, inst.bar_vol, inst.oi))
        return sorted(out)

    def fill(self, feed: pb.Feed, inst: Instrument, mode: Mode) -> None:
        """Write an instrument's current state into ``feed`` in ``mode``."""
        if mode == "ltpc":
            self._ltpc(feed.ltpc, inst)
            feed.requestMode = pb.ltpc
            return
        if mode == "option_greeks":
            flg = feed.firstLevelWithGreeks
            self._ltpc(flg.ltpc, inst)
            if not inst.is_index:
                q = flg.firstDepth
                q.bidP, q.bidQ, q.askP, q.askQ = inst.ltp - 0.05, inst.lot * 3, inst.ltp + 0.05, inst.lot * 2
                flg.vtt, flg.oi = inst.vtt, inst.oi
            if inst.is_option:
                self._greeks(flg.optionGreeks, inst)
                flg.iv = 0.15
            feed.requestMode = pb.option_greeks
            return
        if inst.is_index:
            idx = feed.fullFeed.indexFF
            self._ltpc(idx.ltpc, inst)
            self._ohlc(idx.marketOHLC, inst)
            feed.requestMode = pb.full_d5
            return
        mff = feed.fullFeed.marketFF
        self._ltpc(mff.ltpc, inst)
        levels = 30 if mode == "full_d30" else 5
        quotes = mff.marketLevel.bidAskQuote
        for i in range(levels):
            q = quotes.add()
            q.bidQ, q.bidP = inst.lot * (i + 1), round(inst.ltp - 0.05 * (i + 1), 2)
            q.askQ, q.askP = inst.lot * (i + 2), round(inst.ltp + 0.05 * (i + 1), 2)
        if inst.is_option:
            self._greeks(mff.optionGreeks, inst)
            mff.iv = 0.15
        self._ohlc(mff.marketOHLC, inst)
        mff.atp = round((inst.day_high + inst.day_low + inst.ltp) / 3, 2)
        mff.vtt, mff.oi = inst.vtt, inst.oi
        mff.tbq, mff.tsq = float(inst.lot * 40), float(inst.lot * 38)
        feed.requestMode = pb.full_d30 if mode == "full_d30" else pb.full_d5

    @staticmethod
    def _ltpc(ltpc: pb.LTPC, inst: Instrument) -> None:
        ltpc.ltp, ltpc.ltt, ltpc.ltq, ltpc.cp = inst.ltp, inst.ltt, inst.ltq, inst.cp

    @staticmethod
    def _greeks(g: pb.OptionGreeks, inst: Instrument) -> None:
        g.delta, g.theta, g.gamma, g.vega, g.rho = 0.5, -4.2, 0.0012, 11.5, 2.1

    @staticmethod
    def _ohlc(ohlc: pb.MarketOHLC, inst: Instrument) -> None:
        day_start = inst.ltt - (inst.ltt + IST_OFFSET_MS) % DAY_MS  # 00:00 IST
        d = ohlc.ohlc.add()
        d.interval, d.ts, d.vol = "1d", day_start, inst.vtt
        d.open, d.high, d.low, d.close = inst.day_open, inst.day_high, inst.day_low, inst.ltp
        b = ohlc.ohlc.add()
        b.interval, b.ts, b.vol = "I1", inst.bar_start, inst.bar_vol
        b.open, b.high, b.low, b.close = inst.bar
