"""The feed client against the simulator, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from prometheus_client import CollectorRegistry

from collector.core.calendar import Calendar, parse_hours
from collector.core.decode import decode_frame
from collector.core.market import MarketState
from collector.core.ratelimit import RateLimiter
from collector.core.records import FeedSession, Frame, Gap, Mode
from collector.core.shards import Limits, Shard, plan_universe, shard_universe
from collector.exceptions import DecodeError
from collector.feed.connection import FeedConnection
from collector.journal.appender import JournalAppender
from collector.journal.events import decode_event
from collector.journal.format import EVENT, FRAME, TEXT
from collector.journal.reader import JournalReader
from collector.metrics import FeedMetrics
from collector.simulator.server import Simulator
from collector.supervisor.upstox import TokenSource, UpstoxRest
from tests.support.metrics import sample
from tests.support.options import feed_options, journal_options
from tests.support.waiting import until

FAST = feed_options(
    ping_interval_s=0.2,
    ping_timeout_s=0.5,
    stall_timeout_s=0.4,
    healthy_after_s=0.3,
    backoff_base_s=0.01,
    backoff_cap_s=0.05,
    token_retry_s=0.05,
    rate_limit_retry_s=0.05,
)


# What a journal record decodes to: a frame, or a connection event.
Event = Frame | FeedSession | Gap


class Client:
    """A FeedConnection with a real journal, and what it journaled read back and decoded."""

    def __init__(
        self,
        sim: Simulator,
        shard: Shard,
        journal_dir: Path,
        *,
        tokens: TokenSource | None = None,
        **kw: object,
    ) -> None:
        self.events: list[Event] = []
        self.texts: list[str] = []
        self.registry = CollectorRegistry()
        self.metrics = FeedMetrics(self.registry, connection=shard.shard_id)
        self.market = MarketState()
        directory = journal_dir / str(shard.shard_id)
        self.journal = JournalAppender(directory, journal_options(fsync="never"))
        self.journal.open()
        self.reader = JournalReader(directory)
        authorize = UpstoxRest(
            sim.url, tokens or TokenSource(token=sim.token), RateLimiter([(1000, 1.0)])
        ).authorize
        self.feed = FeedConnection(
            shard,
            authorize=authorize,
            journal=self.journal,
            market=self.market,
            metrics=self.metrics,
            options=kw.pop("options", FAST),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )

    def poll(self) -> list[Event]:
        """Everything journaled so far, decoded as the writer would."""
        while records := self.reader.read():
            for r in records:
                if r.kind == FRAME:
                    try:
                        self.events.append(decode_frame(r.payload, datetime.now(UTC)))
                    except DecodeError:
                        self.events.append(Frame("live_feed", datetime.now(UTC)))  # counted below
                        self.events[-1].kind = "garbage"  # type: ignore[assignment]
                elif r.kind == EVENT:
                    self.events.append(decode_event(r.payload))
                elif r.kind == TEXT:
                    self.texts.append(r.payload.decode())
        return self.events

    def frames(self, kind: str) -> list[Frame]:
        return [e for e in self.poll() if isinstance(e, Frame) and e.kind == kind]

    def ticks(self) -> int:
        return sum(len(f.ticks) for f in self.frames("live_feed"))

    def text_frames(self) -> list[str]:
        self.poll()
        return self.texts

    def gaps(self) -> list[Gap]:
        return [e for e in self.poll() if isinstance(e, Gap)]

    def sessions(self) -> list[FeedSession]:
        return [e for e in self.poll() if isinstance(e, FeedSession)]

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.registry, name, {"connection": str(self.feed.id), **labels})

    def close(self) -> None:
        self.journal.close()
        self.reader.close()


@contextlib.asynccontextmanager
async def running(client: Client) -> AsyncIterator[Client]:
    task = asyncio.create_task(client.feed.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        client.close()


def shard_of(sim: Simulator, n: int = 20, mode: Mode = "full") -> Shard:
    keys = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:n]
    return Shard(0, {mode: keys, "ltpc": ["NSE_INDEX|Nifty 50"]})


def subscribed(sim: Simulator) -> list[dict[str, str]]:
    return sim.stats()["subscriptions"]  # type: ignore[no-any-return]


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


async def test_tls_authorize_connect_subscribe_ticks(
    ca: tuple[trustme.CA, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    authority, ca_path = ca
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_ctx)
    # The client uses the default trust store; SSL_CERT_FILE points it at the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))
    async with Simulator(ssl_context=server_ctx, rate=2000) as sim:
        assert sim.url.startswith("https://")
        shard = shard_of(sim)
        async with running(Client(sim, shard, tmp_path)) as c:
            await until(lambda: c.ticks() > 200, what="live ticks over TLS")
            assert c.events[0].kind == "market_info"  # type: ignore[union-attr]
            snapshot = c.frames("initial_feed")
            assert {t.instrument_key for f in snapshot for t in f.ticks} == {
                k for keys in shard.keys.values() for k in keys
            }
            assert subscribed(sim) == [{k: m for m, ks in shard.keys.items() for k in ks}]
            assert c.metric("collector_feed_connected") == 1
            assert sim.authorize_calls == 1
            # Market state is kept on the feed side, from market_info.
            assert c.market.is_open("NSE_FO")
            assert (
                sample(c.registry, "collector_market_status", {"segment": "NSE_FO", "status": "NORMAL_OPEN"})
                == 1
            )


async def test_tls_verification_is_on_by_default(ca: tuple[trustme.CA, Path], tmp_path: Path) -> None:
    authority, _ = ca
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_ctx)
    async with Simulator(ssl_context=server_ctx) as sim:
        async with running(Client(sim, shard_of(sim), tmp_path)) as c:  # no SSL_CERT_FILE: CA unknown
            await until(lambda: c.metric("collector_feed_connect_failures_total", reason="tls") >= 2)
            assert sim.connections_total == 0 and not c.poll()


FAULTS = ["drop-1006", "drop-1000", "drop-1001", "drop-1011", "drop-4001", "stall-nopings"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_reconnects_after_fault_with_subscriptions_restored(fault: str, tmp_path: Path) -> None:
    async with Simulator(rate=1000) as sim:
        shard = shard_of(sim)
        async with running(Client(sim, shard, tmp_path)) as c:
            await until(lambda: c.ticks() > 20, what="first ticks")
            before = dict(subscribed(sim)[0])
            if fault.startswith("drop"):
                await sim.drop(int(fault.split("-")[1]))
            else:
                sim.stall(pings=False)
            await until(lambda: sim.connections_total == 2, what="reconnect")
            sim.resume()  # a stalled server socket notices the client left only once it reads again
            await until(lambda: len(sim.clients) == 1, what="old connection gone")
            await until(lambda: subscribed(sim) == [before], what="subscriptions restored")
            n = c.ticks()
            await until(lambda: c.ticks() > n + 20, what="ticks after reconnect")
            assert c.metric("collector_feed_reconnects_total") == 1
            assert len(c.frames("initial_feed")) >= 2  # a snapshot after each subscribe
            # The time without a socket is a gap naming the instruments, and the session is recorded.
            [gap] = c.gaps()
            assert gap.reason == "reconnect" and gap.started_at < gap.ended_at
            assert sorted(gap.instruments) == sorted(k for keys in shard.keys.values() for k in keys)
            assert [s.close_reason.split()[0] for s in c.sessions()][:1] == ["code"]


async def test_a_gap_counts_only_time_the_calendar_says_was_open(tmp_path: Path) -> None:
    # A market that opens tomorrow: the drop tonight is no gap.
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1) + timedelta(hours=5, minutes=30)).weekday()
    closed_now = Calendar(parse_hours({"*": {"open": "00:00", "close": "24:00", "days": [tomorrow]}}))
    async with Simulator(rate=500) as sim:
        async with running(Client(sim, shard_of(sim), tmp_path, calendar=closed_now)) as c:
            await until(lambda: c.ticks() > 10)
            await sim.drop(1006)
            await until(lambda: len(c.sessions()) == 1 and c.feed.connected.is_set(), what="reconnected")
            assert c.gaps() == []
            c.feed.calendar = Calendar(
                parse_hours({"*": {"open": "00:00", "close": "24:00", "days": list(range(7))}})
            )
            await sim.drop(1006)
            await until(lambda: len(c.gaps()) == 1, what="a gap while open")


async def test_the_first_connection_records_the_time_the_collector_was_not_running(tmp_path: Path) -> None:
    always = Calendar(parse_hours({"*": {"open": "00:00", "close": "24:00", "days": list(range(7))}}))
    since = datetime.now(UTC) - timedelta(minutes=3)
    async with Simulator(rate=500) as sim:
        async with running(Client(sim, shard_of(sim), tmp_path, calendar=always, down_since=since)) as c:
            await until(lambda: c.ticks() > 10)
            [gap] = c.gaps()
            assert gap.reason == "collector_down" and gap.started_at == since


async def test_stall_with_pings_while_open_keeps_the_socket(tmp_path: Path) -> None:
    async with Simulator(rate=500) as sim:
        async with running(Client(sim, shard_of(sim), tmp_path)) as c:
            await until(lambda: c.ticks() > 10)
            sim.stall(pings=True)
            await until(lambda: c.metric("collector_feed_liveness_pongs_total") >= 2, what="liveness pongs")
            assert sim.connections_total == 1  # silent but answering: not a reason to reconnect
            sim.resume()
            n = c.ticks()
            await until(lambda: c.ticks() > n + 10)


async def test_no_reconnect_loop_while_market_closed(tmp_path: Path) -> None:
    async with Simulator(rate=500) as sim:
        async with running(Client(sim, shard_of(sim), tmp_path)) as c:
            await until(lambda: c.ticks() > 10)
            await sim.set_market({"NSE_FO": "NORMAL_CLOSE", "NSE_INDEX": "NORMAL_CLOSE"})
            await until(lambda: not c.market.any_open(["NSE_FO", "NSE_INDEX"]), what="closed status")
            assert sample(c.registry, "collector_market_open", {"segment": "NSE_FO"}) == 0
            n = c.ticks()
            await asyncio.sleep(FAST.stall_timeout_s * 6)  # silence far beyond the stall timeout
            assert c.ticks() == n  # closed: nothing sent
            assert sim.connections_total == 1 and sim.authorize_calls == 1
            assert c.metric("collector_feed_liveness_pings_total") == 0
            await sim.set_market({"NSE_FO": "NORMAL_OPEN", "NSE_INDEX": "NORMAL_OPEN"})
            await until(lambda: c.ticks() > n + 10, what="ticks after the open")


async def test_garbage_and_text_frames_are_journaled_not_fatal(tmp_path: Path) -> None:
    async with Simulator(rate=500) as sim:
        async with running(Client(sim, shard_of(sim), tmp_path)) as c:
            await until(lambda: c.ticks() > 10)
            for _ in range(3):
                await sim.send_garbage(size=40)
            await sim.send_text()
            await until(lambda: c.metric("collector_text_messages_total") == 1)
            await until(
                lambda: ["simulated" in t for t in c.text_frames()] == [True], what="the text journaled"
            )
            await until(
                lambda: len(c.frames("garbage")) >= 1, what="garbage journaled for the writer to judge"
            )
            n = c.ticks()
            await until(lambda: c.ticks() > n + 10)
            assert sim.connections_total == 1


@pytest.mark.parametrize(("status", "reason"), [(401, "401"), (403, "403"), (429, "429"), (503, "network")])
async def test_authorize_rejections_are_classified_and_retried(
    status: int, reason: str, tmp_path: Path
) -> None:
    async with Simulator(rate=500) as sim:
        sim.fail_authorize(status, count=2)
        async with running(Client(sim, shard_of(sim), tmp_path)) as c:
            await until(lambda: c.ticks() > 10, what="ticks after rejections")
            assert c.metric("collector_feed_connect_failures_total", reason=reason) == 2
            assert sim.authorize_calls == 3


async def test_token_file_is_read_again_before_each_attempt(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("expired-token\n")
    async with Simulator(rate=500) as sim:
        client = Client(sim, shard_of(sim), tmp_path, tokens=TokenSource(token_file=token_file))
        async with running(client) as c:
            await until(lambda: c.metric("collector_feed_connect_failures_total", reason="401") >= 1)
            token_file.write_text(sim.token + "\n")  # a token refresh job rotates the file
            await until(lambda: c.ticks() > 10, what="ticks after the token rotated")


async def test_each_attempt_uses_a_fresh_one_time_code(tmp_path: Path) -> None:
    async with Simulator(rate=200) as sim:
        async with running(Client(sim, shard_of(sim), tmp_path)) as c:
            await until(lambda: c.ticks() > 5)
            for i in range(3):
                await sim.drop(1006)
                await until(lambda i=i: sim.connections_total == i + 2)
            assert sim.authorize_calls == 4 and not sim.codes  # every code used once


async def test_new_keys_are_applied_without_reconnecting(tmp_path: Path) -> None:
    async with Simulator(rate=500) as sim:
        shard = shard_of(sim, n=5)
        async with running(Client(sim, shard, tmp_path)) as c:
            await c.feed.connected.wait()
            await until(lambda: len(subscribed(sim)[0]) == 6)
            fo = list(shard.keys["full"])
            extra = [k for k in sim.market.instruments if k.startswith("NSE_EQ")][:3]
            # Two keys leave, one moves to option_greeks, three join in ltpc.
            new: dict[Mode, list[str]] = {
                "full": fo[2:4],
                "option_greeks": fo[4:],
                "ltpc": ["NSE_INDEX|Nifty 50", *extra],
            }
            await c.feed.set_keys(new)
            want = {k: m for m, keys in new.items() for k in keys}
            await until(lambda: subscribed(sim) == [want], what="applied")
            assert sim.connections_total == 1
            # The changes survive a reconnect.
            await sim.drop(1011)
            await until(lambda: sim.connections_total == 2 and subscribed(sim) == [want])


SMALL = Limits(
    alone={"ltpc": 60, "option_greeks": 40, "full": 30, "full_d30": 5},
    mixed={"ltpc": 30, "option_greeks": 20, "full": 20, "full_d30": 5},
)


async def test_universe_larger_than_one_connection_is_spread_within_limits(tmp_path: Path) -> None:
    async with Simulator(rate=1000, limits=SMALL, max_connections=2) as sim:
        fo = [k for k in sim.market.instruments if k.startswith("NSE_FO")]
        eq = [k for k in sim.market.instruments if k.startswith("NSE_EQ")]
        universe: dict[Mode, list[str]] = {"full": fo[:45], "ltpc": eq[:30]}
        shards, rejected = shard_universe(universe, 2, SMALL)
        assert len(shards) == 2 and not rejected
        clients = [Client(sim, s, tmp_path) for s in shards]
        async with running(clients[0]), running(clients[1]):
            await until(lambda: len(sim.clients) == 2 and sum(len(s) for s in subscribed(sim)) == 75)
            await until(lambda: all(c.ticks() > 10 for c in clients))
            assert all(c.metric("collector_text_messages_total") == 0 for c in clients)
        # Control: the same universe forced onto one connection is refused by the server.
        over = Shard(0, dict(universe))
        async with running(Client(sim, over, tmp_path / "over")) as c:
            await until(lambda: c.metric("collector_text_messages_total") >= 1, what="limit error")
            await until(lambda: len(subscribed(sim)) == 1)
            assert len(subscribed(sim)[0]) < 75


async def test_a_new_universe_is_planned_within_limits_and_applied_to_running_connections(
    tmp_path: Path,
) -> None:
    async with Simulator(rate=500, limits=SMALL, max_connections=2) as sim:
        fo = [k for k in sim.market.instruments if k.startswith("NSE_FO")]
        eq = [k for k in sim.market.instruments if k.startswith("NSE_EQ")]
        shards, _ = shard_universe({"full": fo[:40]}, 2, SMALL)
        clients = [Client(sim, s, tmp_path) for s in shards]
        async with running(clients[0]), running(clients[1]):
            await until(lambda: sum(len(s) for s in subscribed(sim)) == 40)
            # The day rolls: 10 contracts expire, 10 new ones list, 5 move to ltpc, equities join.
            new: dict[Mode, list[str]] = {"full": fo[10:35] + fo[40:50], "ltpc": fo[35:40] + eq[:10]}
            planned, rejected = plan_universe([c.feed.shard for c in clients], new, 2, SMALL)
            for c, shard in zip(clients, planned, strict=True):
                assert SMALL.fits({m: len(k) for m, k in shard.keys.items() if k})  # type: ignore[arg-type]
                await c.feed.set_keys(shard.keys)
            want = {k: m for m, keys in new.items() for k in keys}
            await until(lambda: {k: m for s in subscribed(sim) for k, m in s.items()} == want, what="applied")
            assert sim.connections_total == 2 and not rejected  # no reconnect needed
            # More than two connections can hold: the rest is reported, not forced on.
            planned, rejected = plan_universe([c.feed.shard for c in clients], {"full": fo[:70]}, 2, SMALL)
            assert len(rejected["full"]) == 10
            for c, shard in zip(clients, planned, strict=True):
                await c.feed.set_keys(shard.keys)
            await until(lambda: sum(len(s) for s in subscribed(sim)) == 60, what="60 of 70 placed")


async def test_slow_request_handling_still_subscribes(tmp_path: Path) -> None:
    async with Simulator(rate=300) as sim:
        sim.request_delay_s = 0.3  # the server reads our requests slowly
        async with running(Client(sim, shard_of(sim), tmp_path)) as c:
            await until(lambda: c.ticks() > 10, what="ticks despite a slow server")
            await until(lambda: len(subscribed(sim)[0]) == 21, what="every request handled")


async def test_a_full_journal_stops_reading_and_resumes_with_a_gap(tmp_path: Path) -> None:
    always = Calendar(parse_hours({"*": {"open": "00:00", "close": "24:00", "days": list(range(7))}}))
    options = dataclasses.replace(FAST, journal_max_bytes=2_000_000, journal_retry_s=0.05)
    async with Simulator(rate=3000) as sim:
        async with running(Client(sim, shard_of(sim), tmp_path, options=options, calendar=always)) as c:
            await until(lambda: c.metric("collector_journal_full") == 1, 30, "the journal reached its bound")
            n = sim.connections_total
            await asyncio.sleep(0.5)
            assert sim.connections_total == n and not c.feed.connected.is_set()  # reading stopped
            c.poll()
            c.reader.release(c.reader.position)  # the writer commits and deletes segments...
            c.journal.segment_bytes = 10**9
            for path in sorted(c.journal.directory.glob("*.journal"))[:-1]:
                path.unlink()
            [last] = sorted(c.journal.directory.glob("*.journal"))
            last.unlink()  # (all of it, for this test)
            await until(lambda: c.feed.connected.is_set(), 30, "reading again")
            assert c.metric("collector_journal_full") == 0
            await until(lambda: any(g.reason == "journal" for g in c.gaps()), 10, "the gap recorded")
