"""The universe from the instrument master: explicit keys checked, filters, nearest expiries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from collector.core.universe import UniverseFilter, resolve_universe

NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


def ms(days: int) -> int:
    return int((NOW + timedelta(days=days)).timestamp() * 1000)


def row(
    key: str, segment: str, kind: str = "EQ", underlying: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {"instrument_key": key, "segment": segment, "instrument_type": kind, "underlying_symbol": underlying,
            "name": extra.pop("name", key), **extra}  # fmt: skip


MASTER = [
    row("NSE_EQ|A", "NSE_EQ", name="ALPHA"),
    row("NSE_EQ|B", "NSE_EQ", name="BETA"),
    row("NSE_INDEX|N", "NSE_INDEX", "INDEX", name="NIFTY"),
    # Futures: two underlyings, three expiries each (one already expired).
    row("NSE_FO|A0", "NSE_FO", "FUT", "ALPHA", expiry=ms(-1), underlying_type="EQUITY"),
    row("NSE_FO|A1", "NSE_FO", "FUT", "ALPHA", expiry=ms(6), underlying_type="EQUITY"),
    row("NSE_FO|A2", "NSE_FO", "FUT", "ALPHA", expiry=ms(34), underlying_type="EQUITY"),
    row("NSE_FO|N1", "NSE_FO", "FUT", "NIFTY", expiry=ms(6), underlying_type="INDEX"),
    row("NSE_FO|N2", "NSE_FO", "FUT", "NIFTY", expiry=NOW + timedelta(days=34), underlying_type="INDEX"),
    # Options of one underlying and expiry: a different instrument type, its own group.
    row("NSE_FO|NC", "NSE_FO", "CE", "NIFTY", expiry=ms(6), underlying_type="INDEX"),
    row("NSE_FO|NP", "NSE_FO", "PE", "NIFTY", expiry=ms(13), underlying_type="INDEX"),
]


def resolve(
    *filters: dict[str, Any], explicit: dict[str, list[str]] | None = None
) -> tuple[dict[str, list[str]], list[str]]:
    return resolve_universe(  # type: ignore[return-value]
        MASTER,
        explicit=explicit or {},
        filters=[UniverseFilter(**f) for f in filters],
        now=NOW,  # type: ignore[arg-type]
    )


def test_explicit_keys_are_checked_against_the_master() -> None:
    universe, unknown = resolve(explicit={"full": ["NSE_EQ|A", "NSE_EQ|GONE"], "ltpc": ["NSE_INDEX|N"]})
    assert universe == {"full": ["NSE_EQ|A"], "ltpc": ["NSE_INDEX|N"]} and unknown == ["NSE_EQ|GONE"]


def test_every_criterion_given_must_match() -> None:
    assert resolve({"segments": ["NSE_EQ"]})[0] == {"ltpc": ["NSE_EQ|A", "NSE_EQ|B"]}
    assert resolve({"segments": ["NSE_FO"], "instrument_types": ["FUT"], "underlyings": ["NIFTY"]})[0] == {
        "ltpc": ["NSE_FO|N1", "NSE_FO|N2"]
    }
    assert resolve({"instrument_types": ["FUT"], "underlying_types": ["INDEX"], "mode": "full"})[0] == {
        "full": ["NSE_FO|N1", "NSE_FO|N2"]
    }


def test_an_underlying_is_the_name_where_the_master_gives_none() -> None:
    assert resolve({"underlyings": ["NIFTY"], "segments": ["NSE_INDEX"]})[0] == {"ltpc": ["NSE_INDEX|N"]}


def test_excluded_underlyings_are_left_out() -> None:
    universe, _ = resolve({"instrument_types": ["FUT"], "exclude_underlyings": ["NIFTY"]})
    assert universe == {"ltpc": ["NSE_FO|A0", "NSE_FO|A1", "NSE_FO|A2"]}


def test_nearest_expiries_are_per_underlying_and_instrument_type_and_skip_expired_ones() -> None:
    universe, _ = resolve({"segments": ["NSE_FO"], "nearest_expiries": 1, "mode": "full"})
    assert universe == {"full": ["NSE_FO|A1", "NSE_FO|N1", "NSE_FO|NC", "NSE_FO|NP"]}
    universe, _ = resolve({"instrument_types": ["FUT"], "nearest_expiries": 2})
    assert universe == {"ltpc": ["NSE_FO|A1", "NSE_FO|A2", "NSE_FO|N1", "NSE_FO|N2"]}


def test_filters_add_up_per_mode_and_empty_modes_are_dropped() -> None:
    universe, _ = resolve(
        {"segments": ["NSE_EQ"], "mode": "ltpc"},
        {"segments": ["NSE_INDEX"], "mode": "ltpc"},
        {"segments": ["NO_SUCH"], "mode": "full"},
        explicit={"ltpc": ["NSE_EQ|A"]},
    )
    assert universe == {"ltpc": ["NSE_EQ|A", "NSE_EQ|B", "NSE_INDEX|N"]}


def test_a_filter_with_an_unknown_field_or_a_bad_value_is_refused() -> None:
    with pytest.raises(ValidationError):
        UniverseFilter(segmnets=["NSE_FO"])  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        UniverseFilter(nearest_expiries=0)
    with pytest.raises(ValidationError):
        UniverseFilter(mode="fastest")  # type: ignore[arg-type]
