"""The replay server's answers, in process, on a small recording made through the real writer.

The recording is frames with chosen receive times, journalled and stored by
:class:`~collector.writer.writer.Writer` as a live collector would: a
``market_info``, then every 100 ms a ``live_feed`` of two futures (full), an
index (full), an option (option_greeks) and an equity (ltpc), and once a
reconnect snapshot that repeats a future's last state with its bars (the
writer drops the tick and keeps the bars). Clients are websockets clients on
127.0.0.1; ``collector replay`` itself is run for its command-line errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect

from collector.core.decode import decode_frame
from collector.core.encode import market_info
from collector.core.records import Frame
from collector.core.requests import encode_request
from collector.journal.appender import JournalAppender
from collector.journal.format import FRAME
from collector.metrics import ReplayMetrics
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.replay.recording import Recording
from collector.replay.server import ReplayServer
from collector.simulator.market import SimMarket, generate_master
from tests.support.db import execute
from tests.support.metrics import sample
from tests.support.options import journal_options
from tests.support.pipeline import store
from tests.support.waiting import until

T0 = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)  # 09:30 IST
STEP = timedelta(milliseconds=100)
FRAMES = 40


def _ns(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def _ms(t: datetime) -> int:
    return _ns(t) // 1_000_000


class Small:
    """The recording's keys, by what they are recorded as."""

    def __init__(self) -> None:
        self.market = SimMarket(generate_master(5), seed=3, start_ms=_ms(T0) - 60_000)
        keys = self.market.instruments
        fo = sorted(k for k, i in keys.items() if k.startswith("NSE_FO") and not i.is_option)
        self.futures = fo[:2]
        self.index = "NSE_INDEX|Nifty 50"
        self.option = sorted(k for k, i in keys.items() if i.is_option)[0]
        self.equity = sorted(k for k in keys if k.startswith("NSE_EQ"))[0]
        self.modes = {self.futures[0]: "full", self.futures[1]: "full", self.index: "full",
                      self.option: "option_greeks", self.equity: "ltpc"}  # fmt: skip

    def frames(self) -> list[tuple[datetime, bytes]]:
        out = [(T0, market_info(_ms(T0), dict.fromkeys(("NSE_FO", "NSE_EQ", "NSE_INDEX"), pb.NORMAL_OPEN)))]
        for i in range(1, FRAMES + 1):
            at = T0 + i * STEP
            msg = pb.FeedResponse(type=pb.live_feed, currentTs=_ms(at) - 2)
            for key, mode in self.modes.items():
                self.market.fill(msg.feeds[key], self.market.tick(key, _ms(at) - 3), mode)  # type: ignore[arg-type]
            out.append((at, msg.SerializeToString()))
            if i == FRAMES:  # a reconnect snapshot repeating the first future's last state, bars and all
                snap = pb.FeedResponse(currentTs=_ms(at) + 40)
                key = self.futures[0]
                self.market.fill(snap.feeds[key], self.market.instruments[key], "full")
                out.append((at + timedelta(milliseconds=50), snap.SerializeToString()))
        return out


@pytest.fixture
def small(single_migrated: str, tmp_path: Path) -> Small:
    rec = Small()
    with JournalAppender(tmp_path / "journal", journal_options(fsync="never")) as journal:
        for at, frame in rec.frames():
            journal.append(FRAME, frame, _ns(at))
    asyncio.run(store(single_migrated, tmp_path / "journal"))
    return rec


class Replay:
    """A ReplayServer on the recording of ``dsn``, with its metrics."""

    def __init__(self, dsn: str, speed: float | None) -> None:
        self.dsn = dsn
        self.speed = speed
        self.registry = CollectorRegistry()

    async def __aenter__(self) -> ReplayServer:
        self.conn = await asyncpg.connect(self.dsn)
        recording = await Recording.open(self.conn, T0, T0 + (FRAMES + 2) * STEP)
        self.server = ReplayServer(
            recording, speed=self.speed, metrics=ReplayMetrics(self.registry), token="t", ping_interval_s=None
        )
        await self.server.start()
        return self.server

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()
        await self.conn.close()


async def authorized(server: ReplayServer, token: str = "t") -> str:
    def get() -> str:
        request = urllib.request.Request(
            server.url + "/v3/feed/market-data-feed/authorize", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(json.loads(response.read())["data"]["authorized_redirect_uri"])

    return await asyncio.to_thread(get)


class Client:
    """A raw V3 client that decodes every frame it gets."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.raw: list[bytes] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            assert isinstance(message, bytes), message
            self.raw.append(message)
            self.frames.append(decode_frame(message, datetime.now(UTC)))

    async def sub(self, keys: list[str], mode: str, method: str = "sub") -> None:
        await self.ws.send(encode_request(method, keys, mode))  # type: ignore[arg-type]

    def feeds(self) -> list[pb.FeedResponse]:
        return [pb.FeedResponse.FromString(m) for m in self.raw]

    async def close(self) -> None:
        self._task.cancel()
        await self.ws.close()


@contextlib.asynccontextmanager
async def client(server: ReplayServer) -> AsyncIterator[Client]:
    async with connect(await authorized(server)) as ws:
        c = Client(ws)
        yield c
        await c.close()


async def test_the_direct_path_redirects_to_a_one_time_socket(small: Small, single_migrated: str) -> None:
    async with Replay(single_migrated, None) as server:
        direct = server.url.replace("http", "ws", 1) + "/v3/feed/market-data-feed"
        async with connect(direct, additional_headers={"Authorization": "Bearer t"}) as ws:
            first = decode_frame(await ws.recv(), datetime.now(UTC))  # type: ignore[arg-type]
            assert first.kind == "market_info"
        assert server.redirects == 1
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(direct, additional_headers={"Authorization": "Bearer wrong"}):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(urllib.error.HTTPError) as bad:
            await authorized(server, token="wrong")
        assert bad.value.code == 401
        bad.value.close()
        uri = await authorized(server)
        async with connect(uri):
            pass
        with pytest.raises(websockets.InvalidStatus):  # a code is good for one connect
            async with connect(uri):
                pass


async def test_max_speed_serves_every_frame_and_modes_as_recorded_or_less(
    small: Small, single_migrated: str
) -> None:
    replay = Replay(single_migrated, None)
    async with replay as server:
        async with client(server) as c:
            await until(lambda: bool(c.frames), what="market_info")
            first = c.frames[0]
            # Nothing was recorded before the span: the market_info says nothing yet.
            assert first.kind == "market_info" and first.statuses == []
            await c.sub([small.futures[0], small.index], "full")
            await c.sub([small.equity, "NSE_FO|999999"], "full")  # recorded in ltpc; the other not at all
            await c.sub([small.futures[1]], "ltpc")  # recorded in full: asked for less
            await c.sub([small.option], "full")  # recorded in option_greeks
            await asyncio.wait_for(server.wait(), 60)
            await asyncio.sleep(0.3)
            kinds: dict[str, set[str]] = {}
            for frame in c.frames:
                for t in frame.ticks:
                    kinds.setdefault(t.instrument_key, set()).add(t.kind)
            assert kinds == {
                small.futures[0]: {"full"}, small.index: {"index"}, small.equity: {"ltpc"},
                small.futures[1]: {"ltpc"}, small.option: {"option_greeks"},
            }  # fmt: skip
            modes = {key: feed.requestMode for f in c.feeds() for key, feed in f.feeds.items()}
            assert modes[small.equity] == pb.ltpc and modes[small.option] == pb.option_greeks
            live = [t for f in c.frames if f.kind == "live_feed" for t in f.ticks]
            assert len([t for t in live if t.instrument_key == small.futures[0]]) == FRAMES
            statuses = [s for f in c.frames for s in f.statuses]
            assert {s.segment for s in statuses} == {"NSE_FO", "NSE_EQ", "NSE_INDEX"}
            # The suppressed snapshot's bars ride in a repeated state of the first future.
            carriers = [f for f in c.frames if f.kind == "initial_feed" and f.bars]
            assert carriers and {t.instrument_key for f in carriers for t in f.ticks} == {small.futures[0]}
        assert server.recording.carried_bars > 0
        assert sample(replay.registry, "collector_replay_mode_fallbacks_total") == 2  # equity and option
        assert sample(replay.registry, "collector_replay_finished") == 1
        assert sample(replay.registry, "collector_replay_span_ticks") == server.recording.ticks > 0
        assert sample(replay.registry, "collector_replay_span_keys") == len(server.recording.keys)


async def test_a_late_subscriber_gets_the_state_at_the_clock(small: Small, single_migrated: str) -> None:
    async with Replay(single_migrated, 1.0) as server:
        async with client(server) as first:
            await first.sub([small.equity], "ltpc")
            await until(lambda: server.started.is_set(), what="the clock")
            await asyncio.sleep(2.0)  # half the span
            async with client(server) as late:
                await until(lambda: bool(late.frames), what="market_info")
                assert {s.segment for s in late.frames[0].statuses} == {"NSE_FO", "NSE_EQ", "NSE_INDEX"}
                await late.sub([small.futures[0]], "full")
                await until(lambda: len(late.frames) >= 3, what="snapshot and live frames")
                snapshot = late.frames[1]
                position = server.clock.position(asyncio.get_running_loop().time())
                assert snapshot.kind == "initial_feed" and len(snapshot.ticks) == 1
                assert T0 + 15 * STEP < snapshot.ticks[0].time < position
                assert late.frames[2].kind == "live_feed"
                assert late.frames[2].ticks[0].time > snapshot.ticks[0].time
                await late.sub([small.futures[0]], "ltpc", "change_mode")
                await until(
                    lambda: late.frames[-1].ticks and late.frames[-1].ticks[0].kind == "ltpc", what="ltpc"
                )
                await late.ws.send(
                    json.dumps(
                        {"guid": "x", "method": "unsub", "data": {"instrumentKeys": [small.futures[0]]}}
                    )
                )
                await asyncio.sleep(0.3)
                n = len(late.frames)
                await asyncio.sleep(0.5)
                assert len(late.frames) == n  # unsubscribed: silence
                assert first.frames[-1].ticks  # while the first client goes on


def test_holidays_are_the_recorded_ones(small: Small, single_migrated: str) -> None:
    async def go() -> None:
        await execute(
            single_migrated,
            "INSERT INTO market_holidays (day, description, closed_exchanges) VALUES ('2026-11-27', 'x', '{NSE}')",
        )
        async with Replay(single_migrated, None) as server:

            def get() -> Any:
                request = urllib.request.Request(
                    server.url + "/v2/market/holidays", headers={"Authorization": "Bearer t"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    return json.loads(response.read())

            body = await asyncio.to_thread(get)
            assert body["status"] == "success" and body["data"][0]["date"] == "2026-11-27"
            assert body["data"][0]["closed_exchanges"] == ["NSE"]

    asyncio.run(go())


# -- the command line -------------------------------------------------------------------


def replay_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")},
        "COLLECTOR_DATABASE_URL": dsn,
    }
    return subprocess.run(
        [sys.executable, "-m", "collector", "replay", "--metrics-port", "0", *args], env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


SPAN = ["--from", "2026-11-27T09:30", "--to", "2026-11-27T09:31"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "2026-11-27T09:31", "--to", "2026-11-27T09:30"], "is not after --from"),
        (["--from", "27/11/2026", "--to", "2026-11-27"], "is not YYYY-MM-DD"),
        (["--from", "2026-11-28", "--to", "2026-11-29"], "nothing was recorded from 2026-11-28 00:00:00 IST"),
        ([*SPAN, "--keys", "NSE_FO|1"], "--keys: not recorded in the span: NSE_FO|1"),
        ([*SPAN, "--keys", "NIFTY"], "is not an instrument key"),
        ([*SPAN, "--speed", "0"], "a finite number above 0"),
        ([*SPAN, "--speed", "nan"], "a finite number above 0"),
        ([*SPAN, "--speed", "fast"], "neither a number nor max"),
        ([*SPAN, "--port", "PORT"], "cannot listen on 127.0.0.1:PORT"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    small: Small, single_migrated: str, args: list[str], says: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [a.replace("PORT", port) for a in args]
        says = says.replace("PORT", port)
        result = replay_cli(single_migrated, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("collector replay: ") and says in lines[0], result.stderr


def test_export_bad_input_is_one_line_and_exit_2(single_migrated: str, tmp_path: Path) -> None:
    from tests.support.exported import run_export

    cases = [
        (["--from", "2026-11-27", "--to", "2026-11-26"], "--to (2026-11-26) is before --from (2026-11-27)"),
        (
            ["--from", "2026-11-28", "--to", "2026-11-29"],
            "nothing was recorded on the IST days 2026-11-28 to 2026-11-29",
        ),
        (["--from", "2026-11-27", "--to", "2026-11-27", "--tables", "ticks,trades"], "--tables: trades"),
    ]
    for args, says in cases:
        result = run_export(single_migrated, *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("collector export: ") and says in lines[0], lines
