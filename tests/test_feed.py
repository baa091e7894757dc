"""The feed client against the simulator, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from prometheus_client import CollectorRegistry

from collector.backoff import RateLimiter
from collector.feed.auth import TokenSource
from collector.feed.connection import FeedConnection, FeedOptions
from collector.market import MarketState
from collector.metrics import Metrics
from collector.protocol import Limits, Shard, shard_universe
from collector.records import Event, Frame, Mode
from collector.simulator.server import Simulator
from tests.helpers import sample, until

FAST = FeedOptions(
    ping_interval_s=0.2,
    ping_timeout_s=0.5,
    stall_timeout_s=0.4,
    healthy_after_s=0.3,
    backoff_base_s=0.01,
    backoff_cap_s=0.05,
    token_retry_s=0.05,
    rate_limit_retry_s=0.05,
)


class Client:
    """A FeedConnection with everything it hands over recorded."""

    def __init__(self, sim: Simulator, shard: Shard, *, token: str | None = None, **kw: object) -> None:
        self.events: list[Event] = []
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, connections=3)
        self.market = MarketState()
        kw.setdefault("tokens", TokenSource(token=token or sim.token))
        self.feed = FeedConnection(
            shard,
            api_url=sim.url,
            deliver=self._deliver,
            market=self.market,
            metrics=self.metrics,
            limiter=RateLimiter([(1000, 1.0)]),
            options=FAST,
            **kw,  # type: ignore[arg-type]
        )

    async def _deliver(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Frame):
            self.market.update(event.statuses)

    def frames(self, kind: str) -> list[Frame]:
        return [e for e in self.events if isinstance(e, Frame) and e.kind == kind]

    def ticks(self) -> int:
        return sum(len(f.ticks) for f in self.frames("live_feed"))

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.registry, name, {"connection": str(self.feed.id), **labels})


@contextlib.asynccontextmanager
async def running(client: Client) -> AsyncIterator[Client]:
    task = asyncio.create_task(client.feed.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
    ca: tuple[trustme.CA, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    authority, ca_path = ca
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_ctx)
    # The client uses the default trust store; SSL_CERT_FILE points it at the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))
    async with Simulator(ssl_context=server_ctx, rate=2000) as sim:
        assert sim.url.startswith("https://")
        shard = shard_of(sim)
        async with running(Client(sim, shard)) as c:
            await until(lambda: c.ticks() > 200, what="live ticks over TLS")
            assert c.events[0].kind == "market_info"  # type: ignore[union-attr]
            snapshot = c.frames("initial_feed")
            assert {t.instrument_key for f in snapshot for t in f.ticks} == {
                k for keys in shard.keys.values() for k in keys
            }
            assert subscribed(sim) == [{k: m for m, ks in shard.keys.items() for k in ks}]
            assert c.metric("collector_feed_connected") == 1
            assert sim.authorize_calls == 1


async def test_tls_verification_is_on_by_default(ca: tuple[trustme.CA, Path]) -> None:
    authority, _ = ca
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_ctx)
    async with Simulator(ssl_context=server_ctx) as sim:
        async with running(Client(sim, shard_of(sim))) as c:  # no SSL_CERT_FILE: CA unknown
            await until(lambda: c.metric("collector_feed_connect_failures_total", reason="tls") >= 2)
            assert sim.connections_total == 0 and not c.events


FAULTS = ["drop-1006", "drop-1000", "drop-1001", "drop-1011", "drop-4001", "stall-nopings"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_reconnects_after_fault_with_subscriptions_restored(fault: str) -> None:
    async with Simulator(rate=1000) as sim:
        shard = shard_of(sim)
        async with running(Client(sim, shard)) as c:
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


async def test_stall_with_pings_while_open_keeps_the_socket() -> None:
    async with Simulator(rate=500) as sim:
        async with running(Client(sim, shard_of(sim))) as c:
            await until(lambda: c.ticks() > 10)
            sim.stall(pings=True)
            await until(lambda: c.metric("collector_feed_liveness_pongs_total") >= 2, what="liveness pongs")
            assert sim.connections_total == 1  # silent but answering: not a reason to reconnect
            sim.resume()
            n = c.ticks()
            await until(lambda: c.ticks() > n + 10)


async def test_no_reconnect_loop_while_market_closed() -> None:
    async with Simulator(rate=500) as sim:
        async with running(Client(sim, shard_of(sim))) as c:
            await until(lambda: c.ticks() > 10)
            await sim.set_market({"NSE_FO": "NORMAL_CLOSE", "NSE_INDEX": "NORMAL_CLOSE"})
            await until(lambda: not c.market.any_open(["NSE_FO", "NSE_INDEX"]), what="closed status")
            n = c.ticks()
            await asyncio.sleep(FAST.stall_timeout_s * 6)  # silence far beyond the stall timeout
            assert c.ticks() == n  # closed: nothing sent
            assert sim.connections_total == 1 and sim.authorize_calls == 1
            assert c.metric("collector_feed_liveness_pings_total") == 0
            await sim.set_market({"NSE_FO": "NORMAL_OPEN", "NSE_INDEX": "NORMAL_OPEN"})
            await until(lambda: c.ticks() > n + 10, what="ticks after the open")


async def test_garbage_and_text_frames_are_counted_not_fatal() -> None:
    async with Simulator(rate=500) as sim:
        async with running(Client(sim, shard_of(sim))) as c:
            await until(lambda: c.ticks() > 10)
            for _ in range(3):
                await sim.send_garbage(size=40)
            await sim.send_text()
            await until(lambda: c.metric("collector_text_messages_total") == 1)
            await until(lambda: c.metric("collector_decode_errors_total") >= 1)
            n = c.ticks()
            await until(lambda: c.ticks() > n + 10)
            assert sim.connections_total == 1


@pytest.mark.parametrize(("status", "reason"), [(401, "401"), (403, "403"), (429, "429"), (503, "network")])
async def test_authorize_rejections_are_classified_and_retried(status: int, reason: str) -> None:
    async with Simulator(rate=500) as sim:
        sim.fail_authorize(status, count=2)
        async with running(Client(sim, shard_of(sim))) as c:
            await until(lambda: c.ticks() > 10, what="ticks after rejections")
            assert c.metric("collector_feed_connect_failures_total", reason=reason) == 2
            assert sim.authorize_calls == 3


async def test_token_file_is_read_again_before_each_attempt(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("expired-token\n")
    async with Simulator(rate=500) as sim:
        client = Client(sim, shard_of(sim), tokens=TokenSource(token_file=token_file))
        async with running(client) as c:
            await until(lambda: c.metric("collector_feed_connect_failures_total", reason="401") >= 1)
            token_file.write_text(sim.token + "\n")  # a token refresh job rotates the file
            await until(lambda: c.ticks() > 10, what="ticks after the token rotated")


async def test_each_attempt_uses_a_fresh_one_time_code() -> None:
    async with Simulator(rate=200) as sim:
        async with running(Client(sim, shard_of(sim))) as c:
            await until(lambda: c.ticks() > 5)
            for i in range(3):
                await sim.drop(1006)
                await until(lambda i=i: sim.connections_total == i + 2)
            assert sim.authorize_calls == 4 and not sim.codes  # every code used once


async def test_runtime_sub_unsub_and_change_mode() -> None:
    async with Simulator(rate=500) as sim:
        shard = shard_of(sim, n=5)
        async with running(Client(sim, shard)) as c:
            await c.feed.connected.wait()
            await until(lambda: len(subscribed(sim)[0]) == 6)
            extra = [k for k in sim.market.instruments if k.startswith("NSE_EQ")][:3]
            await c.feed.subscribe("ltpc", extra)
            await until(lambda: all(subscribed(sim)[0].get(k) == "ltpc" for k in extra))
            await c.feed.change_mode("option_greeks", extra[:1])
            await until(lambda: subscribed(sim)[0].get(extra[0]) == "option_greeks")
            await c.feed.unsubscribe(extra[1:])
            await until(lambda: not any(k in subscribed(sim)[0] for k in extra[1:]))
            # The changes survive a reconnect.
            expected = dict(subscribed(sim)[0])
            await sim.drop(1011)
            await until(lambda: sim.connections_total == 2 and subscribed(sim) == [expected])


SMALL = Limits(
    alone={"ltpc": 60, "option_greeks": 40, "full": 30, "full_d30": 5},
    mixed={"ltpc": 30, "option_greeks": 20, "full": 20, "full_d30": 5},
)


async def test_universe_larger_than_one_connection_is_spread_within_limits() -> None:
    async with Simulator(rate=1000, limits=SMALL, max_connections=2) as sim:
        fo = [k for k in sim.market.instruments if k.startswith("NSE_FO")]
        eq = [k for k in sim.market.instruments if k.startswith("NSE_EQ")]
        universe: dict[Mode, list[str]] = {"full": fo[:45], "ltpc": eq[:30]}
        shards, rejected = shard_universe(universe, 2, SMALL)
        assert len(shards) == 2 and not rejected
        clients = [Client(sim, s, limits=SMALL) for s in shards]
        async with running(clients[0]), running(clients[1]):
            await until(lambda: len(sim.clients) == 2 and sum(len(s) for s in subscribed(sim)) == 75)
            await until(lambda: all(c.ticks() > 10 for c in clients))
            assert all(c.metric("collector_text_messages_total") == 0 for c in clients)
        # Control: the same universe forced onto one connection is refused by the server.
        over = Shard(0, dict(universe))
        async with running(Client(sim, over, limits=SMALL)) as c:
            await until(lambda: c.metric("collector_text_messages_total") >= 1, what="limit error")
            await until(lambda: len(subscribed(sim)) == 1)
            assert len(subscribed(sim)[0]) < 75


async def test_new_universe_is_applied_to_running_connections() -> None:
    from collector.app import apply_universe

    async with Simulator(rate=500, limits=SMALL, max_connections=2) as sim:
        fo = [k for k in sim.market.instruments if k.startswith("NSE_FO")]
        eq = [k for k in sim.market.instruments if k.startswith("NSE_EQ")]
        shards, _ = shard_universe({"full": fo[:40]}, 2, SMALL)
        clients = [Client(sim, s, limits=SMALL) for s in shards]
        async with running(clients[0]), running(clients[1]):
            await until(lambda: sum(len(s) for s in subscribed(sim)) == 40)
            # The day rolls: 10 contracts expire, 10 new ones list, 5 move to ltpc, equities join.
            new: dict[Mode, list[str]] = {"full": fo[10:35] + fo[40:50], "ltpc": fo[35:40] + eq[:10]}
            rejected = await apply_universe([c.feed for c in clients], new, clients[0].metrics)
            want = {k: m for m, keys in new.items() for k in keys if k not in rejected.get(m, [])}
            await until(lambda: {k: m for s in subscribed(sim) for k, m in s.items()} == want, what="applied")
            assert sim.connections_total == 2  # no reconnect needed
            for c in clients:
                counts = {m: len(k) for m, k in c.feed.shard.keys.items() if k}
                assert SMALL.fits(counts)  # type: ignore[arg-type]
            assert not rejected and len(want) == 50
            # More than two connections can hold: the rest is reported, not forced on.
            rejected = await apply_universe([c.feed for c in clients], {"full": fo[:70]}, clients[0].metrics)
            assert len(rejected["full"]) == 10
            await until(lambda: sum(len(s) for s in subscribed(sim)) == 60, what="60 of 70 placed")
            assert sample(clients[0].registry, "collector_subscription_rejected_keys", {"mode": "full"}) == 10


async def test_slow_request_handling_still_subscribes() -> None:
    async with Simulator(rate=300) as sim:
        sim.request_delay_s = 0.3  # the server reads our requests slowly
        async with running(Client(sim, shard_of(sim))) as c:
            await until(lambda: c.ticks() > 10, what="ticks despite a slow server")
            await until(lambda: len(subscribed(sim)[0]) == 21, what="every request handled")
