from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from collector.exceptions import ConfigError, RateLimited, TokenRejected
from collector.simulator.server import Simulator
from collector.supervisor.upstox import TokenSource, UpstoxRest, rest_limiter, token_expiry


def jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.c2lnbmF0dXJl"


def test_token_expiry_reads_the_exp_claim() -> None:
    assert token_expiry(jwt({"sub": "X", "exp": 1795500000})) == 1795500000
    assert token_expiry(jwt({"sub": "X"})) is None
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.%%%.c") is None


def test_token_file_wins_and_errors_name_the_setting(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert TokenSource(token="from-env", token_file=f).read() == "from-file"
    f.write_text("")
    with pytest.raises(ConfigError, match="COLLECTOR_UPSTOX_TOKEN_FILE"):
        TokenSource(token_file=f).read()
    with pytest.raises(ConfigError, match="COLLECTOR_UPSTOX_TOKEN"):
        TokenSource().read()


async def test_authorize_failures_are_counted_by_reason_like_every_rest_call() -> None:
    calls: list[str] = []
    failures: list[tuple[str, str]] = []
    async with Simulator(rate=10, stocks=2) as sim:
        rest = UpstoxRest(
            sim.url, TokenSource(token=sim.token), rest_limiter(),
            on_call=calls.append, on_failure=lambda api, reason: failures.append((api, reason)),
        )  # fmt: skip
        sim.fail_authorize(401)
        sim.fail_authorize(429)
        for expected in (TokenRejected, RateLimited):
            with pytest.raises(expected):
                await rest.authorize()
        assert (await rest.authorize()).startswith("ws://")
    assert calls == ["authorize"] * 3
    assert failures == [("authorize", "401"), ("authorize", "429")]
