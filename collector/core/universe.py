"""Resolve the configured universe into instrument keys per mode. No I/O.

Keys come from the instrument master (explicit keys are checked against it),
never from string concatenation: an F&O key is one contract's exchange token,
and tokens are reused after expiry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from collector.core.records import Mode

__all__ = ["UniverseFilter", "resolve_universe"]


class UniverseFilter(BaseModel):
    """A rule selecting instruments from the master, subscribed in ``mode``.

    Every given criterion must match. Example, the F&O stock futures of the
    nearest expiry without index underlyings::

        {"mode": "full", "segments": ["NSE_FO"], "instrument_types": ["FUT"],
         "exclude_underlyings": ["NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY"],
         "nearest_expiries": 1}
    """

    model_config = {"extra": "forbid"}

    mode: Mode = "ltpc"
    segments: list[str] | None = None
    instrument_types: list[str] | None = None
    underlyings: list[str] | None = None
    exclude_underlyings: list[str] = []
    underlying_types: list[str] | None = None
    nearest_expiries: int | None = Field(default=None, ge=1)


def _expiry_ms(row: Mapping[str, Any]) -> int | None:
    value = row.get("expiry")
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _matches(f: UniverseFilter, row: Mapping[str, Any]) -> bool:
    underlying = row.get("underlying_symbol") or row.get("name")
    return (
        (f.segments is None or row.get("segment") in f.segments)
        and (f.instrument_types is None or row.get("instrument_type") in f.instrument_types)
        and (f.underlyings is None or underlying in f.underlyings)
        and underlying not in f.exclude_underlyings
        and (f.underlying_types is None or row.get("underlying_type") in f.underlying_types)
    )


def resolve_universe(
    master: Iterable[Mapping[str, Any]],
    *,
    explicit: Mapping[Mode, list[str]],
    filters: list[UniverseFilter],
    now: datetime | None = None,
) -> tuple[dict[Mode, list[str]], list[str]]:
    """Return (keys per mode, explicit keys missing from the master)."""
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    rows = list(master)
    known = {row["instrument_key"] for row in rows}
    universe: dict[Mode, set[str]] = {}
    unknown: list[str] = []
    for mode, keys in explicit.items():
        for key in keys:
            if key in known:
                universe.setdefault(mode, set()).add(key)
            else:
                unknown.append(key)
    for f in filters:
        chosen = [r for r in rows if _matches(f, r)]
        if f.nearest_expiries is not None:
            # Per underlying (and instrument type), keep the N nearest live expiries.
            by_group: dict[tuple[str, str], set[int]] = {}
            for r in chosen:
                exp = _expiry_ms(r)
                if exp is not None and exp >= now_ms:
                    group = (str(r.get("underlying_symbol") or r.get("name")), str(r.get("instrument_type")))
                    by_group.setdefault(group, set()).add(exp)
            keep = {g: set(sorted(e)[: f.nearest_expiries]) for g, e in by_group.items()}
            chosen = [
                r
                for r in chosen
                if _expiry_ms(r)
                in keep.get(
                    (str(r.get("underlying_symbol") or r.get("name")), str(r.get("instrument_type"))), set()
                )
            ]
        universe.setdefault(f.mode, set()).update(r["instrument_key"] for r in chosen)
    return {m: sorted(k) for m, k in universe.items() if k}, unknown
