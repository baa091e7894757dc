"""collector: Upstox V3 market data into TimescaleDB, observable in Prometheus and Grafana.

The pipeline, and where each stage lives:

    feed/       socket → journal     (``connection``, ``journal``; ``auth`` for the REST side)
    journal     the record format both sides share
    sink/       journal → decode → sequence → batch → store   (``tail``, ``writer``, ``store``)
    decode, sequencer, batch, protocol, universe, market, calendar: the pure core (no I/O)
    db/         migrations, the instrument master, scheduled jobs
    app         the supervisor: one feed and one writer process per connection
    simulator/  speaks the same protocol, for tests and demos
"""

__version__ = "0.2.0"
