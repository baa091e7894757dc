"""collector: Upstox V3 market data into TimescaleDB, observable in Prometheus and Grafana.

The pipeline, one module each: feed (``feed``) -> decode (``decode``) ->
batch (``sequencer``, ``batch``) -> sink (``writer``, ``store``, ``spool``). ``simulator``
speaks the same protocol for tests and demos.
"""

__version__ = "0.1.0"
