"""Every setting with invalid values: exit 2, one line naming the variable, no traceback.

The walk covers every field of ``Settings``: values derived from the field's
type and bounds (a number that is not one, past each bound, infinite; a
boolean or a choice that is not one; JSON that is not JSON or not the right
shape) plus the values listed in ``INVALID``. A new setting with no invalid
value fails ``test_every_setting_is_walked`` until one is listed (or it is
named in ``ANY_VALUE_IS_VALID`` with the reason).

``collector run`` must fail before touching the database: its URL points at a
loopback listener of the test's, which records any connection. The commands
run in a scratch folder, so no ``.env`` of the developer's takes part.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pytest
from pydantic.fields import FieldInfo

from collector.settings import Settings
from tests.support.paths import ROOT

NOT_A_FOLDER = str(ROOT / "README.md")
INVALID: dict[str, list[str]] = {
    "database_url": [
        "garbage", "mysql://u@127.0.0.1/db", "postgresql://x@127.0.0.1:99999/x",
        "postgresql://x@127.0.0.1:notaport/x",
    ],
    "upstox_api_url": ["garbage", "ftp://127.0.0.1/x", "http://", "https://[::1"],
    "upstox_token_file": [str(ROOT), f"{NOT_A_FOLDER}/token"],
    "instruments_url": ["ftp://127.0.0.1/complete.json.gz", "https://"],
    "subscriptions": ['{"fastest": ["NSE_EQ|X"]}', '{"ltpc": ["RELIANCE"]}', '{"ltpc": "NSE_EQ|X"}'],
    "universe": ['[{"mode": "full", "segmnets": ["NSE_FO"]}]', '[{"nearest_expiries": 0}]', "[1]"],
    "connections": ["3"],  # more than 2 without COLLECTOR_UPSTOX_PLUS
    "backoff_base_s": ["120"],  # more than the cap (60 s)
    "journal_dir": [NOT_A_FOLDER, f"{NOT_A_FOLDER}/journal"],
    "journal_segment_bytes": [str(16 * 1024**3)],  # more than the journal's bound (8 GiB)
    "retention_days": ["36501"],
    "instrument_sync_time": ["25:00", "6", "06:15:00", "noon"],
    "market_hours": [
        '{"NSE": 1}', '{"NSEE": {"open": "09:15"}}', '{"NSE": {"open": "15:30", "close": "09:15"}}',
        '{"NSE": {"days": [7]}}', '{"NSE": {"open": "9:15pm"}}',
    ],
    "metrics_host": ["not a host", "-bad-"],
    "log_level": ["debug"],
}  # fmt: skip
ANY_VALUE_IS_VALID = {
    "upstox_token": "any text can be a token: only Upstox can judge it (a 401 at connect)",
}


def _bounds(field: FieldInfo) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(annotated_types, name.capitalize())):
                out[name] = getattr(m, name)
    return out


def derived(name: str, field: FieldInfo) -> list[str]:
    """Invalid values that follow from the field's type and bounds."""
    kind: Any = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: unset is valid, X is walked
        [kind] = [a for a in typing.get_args(kind) if a is not type(None)]
    b = _bounds(field)
    if kind is bool:
        return ["maybe", "2"]
    if kind is int:
        out = ["many", "1.5"]
        out += [str(int(b["ge"]) - 1)] if "ge" in b else []
        out += [str(int(b["le"]) + 1)] if "le" in b else []
        return out
    if kind is float:
        out = ["soon", "inf"]
        out += [str(b["gt"])] if "gt" in b else []
        out += [str(b["ge"] - 0.5)] if "ge" in b else []
        out += [str(b["le"] + 0.5)] if "le" in b else []
        return out + (["1e300"] if name.endswith("_s") else [])
    if typing.get_origin(kind) is Literal:
        return ["bogus"]
    if typing.get_origin(kind) is dict:
        return ["not json", "[]"]
    if typing.get_origin(kind) is list:
        return ["not json", "{}"]
    return []


def cases() -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, field in Settings.model_fields.items()
        for value in derived(name, field) + INVALID.get(name, [])
    ]


def test_every_setting_is_walked() -> None:
    walked = {name for name, _ in cases()}
    missing = set(Settings.model_fields) - walked - set(ANY_VALUE_IS_VALID)
    assert not missing, f"settings without an invalid value in tests/test_settings.py: {sorted(missing)}"


class Listener:
    """A TCP port on loopback where the database would be; it only records connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.sock.setblocking(False)
        self.dsn = f"postgresql://collector@127.0.0.1:{self.sock.getsockname()[1]}/collector"

    def touched(self) -> bool:
        # A connection the client made (and even closed since) waits in the accept queue.
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


def environment(scratch: Path, listener: Listener, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update(
        COLLECTOR_DATABASE_URL=listener.dsn,
        COLLECTOR_JOURNAL_DIR=str(scratch / "journal"),
        COLLECTOR_METRICS_PORT="0",
        COLLECTOR_UPSTOX_TOKEN="t",
        COLLECTOR_SUBSCRIPTIONS='{"ltpc": ["NSE_INDEX|Nifty 50"]}',
    )
    env.update(settings)
    return env


def check(code: int, stderr: str, variable: str, listener: Listener) -> str | None:
    touched = listener.touched()  # first: a connection left queued would be blamed on the next case
    lines = stderr.strip().splitlines()
    if code != 2:
        return f"exit {code}"
    if len(lines) != 1 or "Traceback" in stderr:
        return "not one line"
    if not lines[0].startswith(f"collector: configuration error: {variable}: "):
        return "does not name the variable first"
    if touched:
        return "touched the database"
    return None


def attempt(command: str, name: str, value: str, scratch: Path) -> str | None:
    """Run the command with one bad setting; what went wrong, or None."""
    variable = f"COLLECTOR_{name.upper()}"
    listener = Listener()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "collector", command],
            cwd=scratch,
            env=environment(scratch, listener, **{variable: value}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        problem = check(result.returncode, result.stderr, variable, listener)
        if problem:
            return f"{command} {variable}={value!r}: {problem}: {result.stderr.strip()[-300:]!r}"
        return None
    finally:
        listener.close()


def test_every_invalid_setting_exits_2_in_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The command's own entry point, in this process (113 values in well under a second);
    # the next test runs the real `python -m collector run` for a value of each setting.
    from collector.cli import main

    monkeypatch.chdir(tmp_path)
    listener = Listener()
    try:
        for key in [k for k in os.environ if k.startswith("COLLECTOR_")]:
            monkeypatch.delenv(key)
        for key, value in environment(tmp_path, listener).items():
            if key.startswith("COLLECTOR_"):
                monkeypatch.setenv(key, value)
        failures = []
        for name, value in cases():
            variable = f"COLLECTOR_{name.upper()}"
            with monkeypatch.context() as m:
                m.setenv(variable, value)
                code = main(["migrate"])
            err = capsys.readouterr().err
            problem = check(code, err, variable, listener)
            if problem:
                failures.append(f"migrate {variable}={value!r}: {problem}: {err.strip()[-300:]!r}")
        assert not failures, "\n".join(failures)
    finally:
        listener.close()


def test_run_refuses_a_bad_value_of_every_setting_before_touching_the_database(tmp_path: Path) -> None:
    first: dict[str, str] = {}
    for name, value in cases():
        first.setdefault(name, value)
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = pool.map(lambda item: attempt("run", item[0], item[1], tmp_path), first.items())
        failures = [f for f in found if f]
    assert not failures, "\n".join(failures)


def test_the_listener_sees_a_run_that_gets_as_far_as_the_database(tmp_path: Path) -> None:
    # The control: with valid settings `run` does connect, so "touched" above can fail.
    listener = Listener()
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "run"],
        cwd=tmp_path,
        env=environment(tmp_path, listener),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not listener.touched():
            assert time.monotonic() < deadline and proc.poll() is None, "run never reached the database"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
        listener.close()


def test_run_names_a_metrics_port_in_use_before_touching_the_database(tmp_path: Path) -> None:
    # Not a bad value but a bad environment: only `run`, which serves metrics, can see it.
    busy = socket.create_server(("127.0.0.1", 0))
    listener = Listener()
    try:
        port = str(busy.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "collector", "run"],
            cwd=tmp_path,
            env=environment(tmp_path, listener, COLLECTOR_METRICS_PORT=port, COLLECTOR_LOG_LEVEL="WARNING"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("collector: configuration error: COLLECTOR_METRICS_PORT: cannot listen on ")
        assert not listener.touched()
    finally:
        busy.close()
        listener.close()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COLLECTOR_CONNECTIONS", "3", "more than 2 needs COLLECTOR_UPSTOX_PLUS=true (Upstox Plus)"),
        ("COLLECTOR_UNIVERSE", '[{"mode": "fastest"}]', "[0].mode: Input should be 'ltpc', "),
        ("COLLECTOR_PING_INTERVAL_S", "inf", "must be a finite number"),
        ("COLLECTOR_RETENTION_DAYS", "10000000000", "at most 36500 days"),
        ("COLLECTOR_MARKET_HOURS", '{"NSEE": {}}', "unknown exchange 'NSEE'"),
        ("COLLECTOR_DATABASE_URL", "postgresql://u:s3cret@127.0.0.1:99999/x", "not a usable URL"),
    ],
)
def test_the_line_says_what_is_wrong(variable: str, value: str, message: str, tmp_path: Path) -> None:
    listener = Listener()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "collector", "migrate"],
            cwd=tmp_path,
            env=environment(tmp_path, listener, **{variable: value}),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        listener.close()
    assert result.returncode == 2
    assert result.stderr.startswith(f"collector: configuration error: {variable}: {message}"), result.stderr
    assert "s3cret" not in result.stderr
