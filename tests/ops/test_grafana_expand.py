"""The test expander agrees with the expansions documented for Grafana."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.support.grafana import expand

START = datetime(2026, 11, 20, 3, 45, tzinfo=UTC)
END = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def test_expansions() -> None:
    out = expand(
        "SELECT $__timeGroupAlias(time, '5m'), x FROM t WHERE $__timeFilter(time) AND k = '$instrument' "
        "AND ts > '$__interval_ms ms'::interval",
        start=START,
        end=END,
        variables={"instrument": "NSE_FO|1"},
    )
    assert out == (
        "SELECT time_bucket('300.000s',time) AS \"time\", x FROM t WHERE time BETWEEN "
        "'2026-11-20T03:45:00Z' AND '2026-11-20T10:00:00Z' AND k = 'NSE_FO|1' AND ts > '60000 ms'::interval"
    )


def test_unknown_macro_and_variable_are_errors() -> None:
    with pytest.raises(ValueError):
        expand("SELECT $__nope(x)", start=START, end=END, variables={})
    with pytest.raises(KeyError):
        expand("SELECT '$missing'", start=START, end=END, variables={})
