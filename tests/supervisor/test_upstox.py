from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from collector.exceptions import ConfigError
from collector.supervisor.upstox import TokenSource, token_expiry


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
