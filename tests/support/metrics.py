"""Reading metrics: from a registry in this process, or scraped from a ``/metrics`` endpoint."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    """A metric's current value in a prometheus_client registry (0 if absent)."""
    return float(registry.get_sample_value(name, labels or {}) or 0.0)


def scrape(url: str) -> Samples:
    """Every sample ``url`` serves, by (name, labels); {} while nothing listens there."""
    try:
        body = urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
