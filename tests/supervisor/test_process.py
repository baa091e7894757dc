"""``collector run`` as a process: its children, its signals, its journal, its secrets.

Each test starts the real collector (``python -m collector run``), streaming
from the simulator over loopback into a real TimescaleDB, and counts every
tick per instrument against what the simulator sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from collector.simulator.server import Simulator
from tests.support.db import Server, connection
from tests.support.ports import free_port
from tests.support.process import CollectorProcess, collector_env, expect_exactly_once


def env_for(sim: Simulator, dsn: str, **extra: str) -> dict[str, str]:
    return collector_env(sim, dsn, **extra)


async def ticks_stored(dsn: str) -> int:
    async with connection(dsn) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM ticks"))


# SIGHUP is what a closed terminal or SSH session sends: it must drain like SIGTERM (issue 16).
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_streams_and_stops_on_a_signal_with_everything_read_committed(
    migrated: str, tmp_path: Path, sig: signal.Signals
) -> None:
    async with Simulator(rate=2000, stocks=20) as sim:
        with CollectorProcess(tmp_path, env_for(sim, migrated)) as c:
            await c.until_rows()
            children = c.children()
            assert sorted(children) == ["feed 0", "feed 1", "writer 0", "writer 1"], children
            # A feed process is lean: it loaded neither the database driver nor protobuf
            # nor pydantic (their C extensions would be mapped); a writer loads both.
            heavy = ("/asyncpg/", "/google/_upb/", "/pydantic_core/")
            for who, pid in children.items():
                loaded = {h for h in heavy if h in Path(f"/proc/{pid}/maps").read_text()}
                if who.startswith("feed"):
                    assert not loaded, (who, loaded)
                else:
                    assert {"/asyncpg/", "/google/_upb/"} <= loaded, (who, loaded)
            assert c.metric("collector_process_up") == 4
            assert c.metric("collector_feed_connected") == 2
            await c.settle(sim)
            rc, took = await c.stop(sig=sig)
        assert rc == 0, c.tail()
        assert took < 15, took
        assert "everything read is committed" in c.tail()
        totals = await expect_exactly_once(migrated, sim.stats()["instruments"])
    assert totals["sent"] > 2000
    assert not any(Path(f"/proc/{pid}").exists() for pid in children.values())
    # The writers drained: each connection's session, closed by the stop, is stored.
    async with connection(migrated) as conn:
        sessions = await conn.fetch("SELECT connection, disconnected_at FROM feed_sessions")
    assert sorted(row["connection"] for row in sessions) == [0, 1]
    assert all(row["disconnected_at"] is not None for row in sessions)


async def test_sigkill_while_the_database_is_down_loses_nothing_read(
    tsdb: Server, migrated: str, tmp_path: Path
) -> None:
    """The held-out case of issue 8: database stopped, SIGKILL 3 s later, everything read is stored once."""
    async with Simulator(rate=3000, stocks=20) as sim:
        env = env_for(sim, migrated)
        first = CollectorProcess(tmp_path, env).start()
        try:
            await first.wait_for(
                lambda: first.metric("collector_rows_written_total", table="ticks") > 1000, 60, "ticks"
            )
            await asyncio.to_thread(tsdb.stop)
            try:
                await asyncio.sleep(3)  # streaming on into the journal while the database is away
                await first.settle(sim)
                first.send(signal.SIGKILL)
                first.proc.wait(10)  # type: ignore[union-attr]
                sent_before = sim.stats()["ticks_sent"]
            finally:
                await asyncio.to_thread(tsdb.start)
        finally:
            first.kill()
        # The children died with the supervisor (PR_SET_PDEATHSIG): nothing is left writing.
        await asyncio.sleep(0.5)
        assert not first.children()
        sim.rate = 3000
        with CollectorProcess(tmp_path, env) as second:
            await second.wait_for(lambda: second.metric("collector_feed_connected") == 2, 60, "reconnected")
            await asyncio.sleep(2)
            await second.settle(sim)
            rc, _ = await second.stop()
            assert rc == 0, second.tail()
        totals = await expect_exactly_once(migrated, sim.stats()["instruments"])
    assert sent_before > 5000 and totals["sent"] > sent_before
    async with connection(migrated) as conn:
        gaps = await conn.fetch("SELECT * FROM feed_gaps WHERE reason = 'collector_down'")
    # The time without a connection is a recorded gap, for each connection.
    assert sorted(g["connection"] for g in gaps) == [0, 1]


async def test_a_crashed_child_is_restarted_and_nothing_read_is_lost(migrated: str, tmp_path: Path) -> None:
    async with Simulator(rate=2000, stocks=20) as sim:
        with CollectorProcess(tmp_path, env_for(sim, migrated)) as c:
            await c.wait_for(
                lambda: c.metric("collector_rows_written_total", table="ticks") > 1000, 60, "ticks"
            )
            before = c.children()
            # A writer dies mid-stream, with frames in its journal it had not committed...
            os.kill(before["writer 0"], signal.SIGKILL)
            # ... and a feed dies too, once the simulator paused: ticks on their way
            # to a killed reader were never read, so they cannot count here.
            await c.settle(sim)
            os.kill(before["feed 1"], signal.SIGKILL)
            await c.wait_for(lambda: len(sim.clients) == 1, 10, "the simulator to see the socket go")
            sim.rate = 2000
            await c.wait_for(
                lambda: c.metric("collector_process_restarts_total") == 2 and c.metric("collector_process_up") == 4,
                60, "both restarted",
            )  # fmt: skip
            after = c.children()
            assert after["writer 0"] != before["writer 0"] and after["feed 1"] != before["feed 1"]
            assert after["feed 0"] == before["feed 0"]  # the others never noticed
            await c.wait_for(lambda: c.metric("collector_feed_connected") == 2, 60, "reconnected")
            await asyncio.sleep(1)
            await c.settle(sim)
            rc, _ = await c.stop()
        assert rc == 0, c.tail()
        await expect_exactly_once(migrated, sim.stats()["instruments"])


@pytest.mark.limit(120)
async def test_sigterm_while_the_database_is_unreachable_at_startup_exits_at_once(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    async with Simulator() as sim:
        c = CollectorProcess(tmp_path, env_for(sim, f"postgresql://x@127.0.0.1:{port}/x")).start()
        try:
            await c.wait_for(lambda: "database not reachable" in c.tail(), 30, "the retry loop")
            rc, took = await c.stop(30)
        finally:
            c.kill()
    assert rc == 0 and took < 5, (rc, took, c.tail())
    assert "stopped before the database could be reached" in c.tail()


@pytest.mark.parametrize(
    "dsn",
    ["wrong-password", "no-such-database", "bad-sslmode"],
)
async def test_a_database_url_that_cannot_work_exits_2_with_one_line(
    tsdb: Server, migrated: str, tmp_path: Path, dsn: str
) -> None:
    name = migrated.rsplit("/", 1)[1]
    host = tsdb.dsn.split("@", 1)[1].rsplit("/", 1)[0]
    async with connection(migrated) as conn:
        await conn.execute("DROP ROLE IF EXISTS t_pw_user")
        await conn.execute("CREATE ROLE t_pw_user LOGIN PASSWORD 'right-one'")
    url = {
        "wrong-password": f"postgresql://t_pw_user:s3cr3t-wrong@{host}/{name}",
        "no-such-database": f"postgresql://postgres:s3cr3t-pw@{host}/no_such_db_here",
        "bad-sslmode": f"postgresql://postgres:s3cr3t-pw@{host}/{name}?sslmode=bogus",
    }[dsn]
    async with Simulator() as sim:
        c = CollectorProcess(tmp_path, env_for(sim, url)).start()
        try:
            rc = await asyncio.to_thread(c.proc.wait, 60)  # type: ignore[union-attr]
        finally:
            c.kill()
    out = c.tail()
    lines = [line for line in out.splitlines() if line.startswith("collector:")]
    assert rc == 2, out
    assert len(lines) == 1 and "COLLECTOR_DATABASE_URL" in lines[0], out
    assert "s3cr3t" not in out and "Traceback" not in out


async def test_a_second_collector_on_the_same_journal_refuses(migrated: str, tmp_path: Path) -> None:
    async with Simulator(rate=500) as sim:
        with CollectorProcess(tmp_path, env_for(sim, migrated)) as first:
            await first.wait_for(lambda: first.metric("collector_feed_connected") == 2, 60, "streaming")
            second = CollectorProcess(
                tmp_path / "second", env_for(sim, migrated, COLLECTOR_JOURNAL_DIR=str(tmp_path / "journal"))
            )
            (tmp_path / "second").mkdir()
            second.start()
            rc = await asyncio.to_thread(second.proc.wait, 60)  # type: ignore[union-attr]
            assert rc == 2, second.tail()
            assert (
                f"COLLECTOR_JOURNAL_DIR: journal folder {tmp_path / 'journal'} is in use by pid {first.pid}"
                in second.tail()
            )
            assert first.metric("collector_feed_connected") == 2  # the first one never noticed
            rc, _ = await first.stop()
            assert rc == 0


async def test_secrets_appear_in_no_child_environment_title_log_or_metric(
    migrated: str, tmp_path: Path
) -> None:
    password = "pw-" + os.urandom(6).hex()
    async with connection(migrated) as conn:
        await conn.execute("DROP ROLE IF EXISTS t_secret_user")
        await conn.execute(f"CREATE ROLE t_secret_user SUPERUSER LOGIN PASSWORD '{password}'")
    base, name = migrated.split("@", 1)[1].rsplit("/", 1)
    dsn = f"postgresql://t_secret_user:{password}@{base}/{name}"
    token = "tok-" + os.urandom(6).hex()
    async with Simulator(rate=1000, token=token) as sim:
        with CollectorProcess(tmp_path, {**env_for(sim, dsn), "COLLECTOR_LOG_LEVEL": "DEBUG"}) as c:
            await c.wait_for(
                lambda: c.metric("collector_rows_written_total", table="ticks") > 500, 60, "ticks"
            )
            sim.fail_authorize(401, count=3)  # a failing authorize logs its error...
            await sim.drop(1006)
            await c.wait_for(
                lambda: c.metric("collector_feed_connect_failures_total", reason="401") >= 1, 60, "401"
            )
            # ...and so does losing the database: sessions killed, then logins refused for a while.
            async with connection(migrated) as admin:
                try:
                    await admin.execute("ALTER ROLE t_secret_user NOLOGIN")
                    await admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 't_secret_user'"
                    )
                    await c.wait_for(lambda: c.metric("collector_database_up") == 0, 60, "the database lost")
                    await asyncio.sleep(2)  # a few refused reconnects, each logged
                finally:
                    await admin.execute("ALTER ROLE t_secret_user LOGIN")
            await c.wait_for(lambda: c.metric("collector_database_up") == 1, 60, "the database back")
            seen = []
            for who, pid in {**c.children(), "supervisor": c.pid}.items():
                proc = Path(f"/proc/{pid}")
                title = (proc / "cmdline").read_bytes()
                assert password.encode() not in title and token.encode() not in title, who
                if (
                    who != "supervisor"
                ):  # the user gave the supervisor its environment; children get none of it
                    environ = (proc / "environ").read_bytes()
                    assert password.encode() not in environ and token.encode() not in environ, who
                seen.append(who)
            body = json.dumps([[name, sorted(labels)] for name, labels in c.scrape()])
            assert password not in body and token not in body
            rc, _ = await c.stop()
    assert sorted(seen) == ["feed 0", "feed 1", "supervisor", "writer 0", "writer 1"]
    log = c.log.read_text()
    assert password not in log and token not in log and rc == 0
    assert "401" in log  # the failure was logged, without the token
    assert "not permitted to log in" in log  # so was the database's refusal, without the password


async def test_metrics_are_served_at_metrics_only(migrated: str, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    async with Simulator(rate=200) as sim:
        with CollectorProcess(tmp_path, env_for(sim, migrated)) as c:
            await c.wait_for(lambda: c.metric("collector_feed_connected") == 2, 60, "streaming")
            base = f"http://127.0.0.1:{c.metrics_port}"
            for path in ("/", "/metrics/", "/debug", "/favicon.ico"):
                with pytest.raises(urllib.error.HTTPError) as err:
                    await asyncio.to_thread(urllib.request.urlopen, base + path, None, 5)
                assert err.value.code == 404, path
                err.value.close()
            body = (
                (await asyncio.to_thread(urllib.request.urlopen, base + "/metrics", None, 5)).read().decode()
            )
            assert "collector_build_info" in body
            # It listens where it was told: loopback, not every address.
            conns = Path("/proc/net/tcp").read_text()
            assert f"0100007F:{c.metrics_port:04X}" in conns
            assert f"00000000:{c.metrics_port:04X}" not in conns
            await c.stop()


async def test_shutdown_within_the_timeout_while_the_database_is_away(
    tsdb: Server, migrated: str, tmp_path: Path
) -> None:
    async with Simulator(rate=2000, stocks=20) as sim:
        env = env_for(sim, migrated, COLLECTOR_SHUTDOWN_TIMEOUT_S="6")
        with CollectorProcess(tmp_path, env) as c:
            await c.wait_for(
                lambda: c.metric("collector_rows_written_total", table="ticks") > 500, 60, "ticks"
            )
            await asyncio.to_thread(tsdb.stop)
            try:
                await asyncio.sleep(2)
                await c.settle(sim)
                rc, took = await c.stop(30)
            finally:
                await asyncio.to_thread(tsdb.start)
        assert rc == 0 and took < 6 + 2, (took, c.tail())
        assert "the journals keep what was not committed" in c.tail()
        # The next start stores what the journals kept.
        with CollectorProcess(tmp_path, env) as again:
            await again.wait_for(lambda: again.metric("collector_feed_connected") == 2, 60, "streaming again")
            await again.settle(sim)
            await again.stop()
        await expect_exactly_once(migrated, sim.stats()["instruments"])
    assert await ticks_stored(migrated) > 0
