"""Grafana's PostgreSQL macro expansion, as Grafana does it, for testing dashboards.

Three passes (pkg/tsdb/grafana-postgresql-datasource/macros.go): dashboard
variables; then $__interval_ms, $__interval, $__unixEpochFrom(),
$__unixEpochTo(); then the macros, matched by ``\\$([_a-zA-Z0-9]+)\\(([^\\)]*)\\)``
with arguments split on commas. An unknown macro is an error. Times are UTC
RFC3339 literals.
"""

from __future__ import annotations

import re
from datetime import datetime

MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
VARIABLE = re.compile(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(interval: str) -> float:
    interval = interval.strip().strip("'\"")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", interval)
    if not m:
        raise ValueError(f"bad interval {interval!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def _rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(
    sql: str,
    *,
    start: datetime,
    end: datetime,
    variables: dict[str, str],
    interval_ms: int = 60_000,
    timescaledb: bool = True,
) -> str:
    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.startswith("__"):
            return m.group(0)  # a macro or built-in, handled below
        if name not in variables:
            raise KeyError(f"undefined dashboard variable ${name}")
        return variables[name]

    sql = VARIABLE.sub(variable, sql)
    sql = sql.replace("$__interval_ms", str(interval_ms))
    unit = (
        "ms"
        if interval_ms < 1000
        else "s"
        if interval_ms < 60_000
        else "m"
        if interval_ms < 3_600_000
        else "h"
    )
    sql = sql.replace("$__interval", f"{interval_ms // int(UNITS[unit] * 1000)}{unit}")
    sql = sql.replace("$__unixEpochFrom()", str(int(start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(end.timestamp())))

    def macro(m: re.Match[str]) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            width = seconds(args[1])
            group = (
                f"time_bucket('{width:.3f}s',{args[0]})"
                if timescaledb
                else f"floor(extract(epoch from {args[0]})/{width:g})*{width:g}"
            )
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
        if name == "__unixEpochGroup":
            width = seconds(args[1])
            return f"floor(({args[0]})/{width:g})*{width:g}"
        raise ValueError(f"unknown macro ${name}")

    return MACRO.sub(macro, sql)
