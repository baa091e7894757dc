"""collector: Upstox V3 market data into TimescaleDB, observable in Prometheus and Grafana.

One supervisor process and, per connection, a feed process and a writer
process. The data flows one way: socket → journal → decode → sequence →
batch → TimescaleDB. Where each part lives:

    core/        the rules, no I/O: records, times, decode, encode, sequencer, batch, market,
                 calendar, universe, master, requests, shards, gaps, gapfill, backoff, ratelimit, span
    journal/     the one log both processes of a connection share: format, files, appender,
                 reader, events
    ipc/         supervisor ↔ child: the channel and its messages, the child runtime, the metric files
    feed/        the feed process: socket → journal      (``connection``, ``process``)
    writer/      the writer process: journal → database  (``writer``, ``store``, ``process``)
    supervisor/  the parent: startup → main loop → shutdown (``supervisor``), its children
                 (``children``), Upstox's REST API (``upstox``), holidays and backfill (``gapwork``),
                 ``/metrics`` (``serving``)
    db/          SQL: connect, migrations, the instrument master, holidays, backfill, jobs
    proto/       the generated protobuf code; simulator/ a local stand-in for Upstox
    feedserver/  the V3 feed protocol as a server, which the simulator and the replay serve through
    replay/      ``collector replay``: a recorded span back over the protocol (``recording``,
                 ``clock``, ``server``, ``command``)
    export/      ``collector export``: recorded tables to Parquet (``parquet``, ``command``)

``cli`` holds the commands. Shared by every process: ``settings`` (every
setting and its default), ``options`` (what each component is handed, built
from the settings), ``exceptions`` and ``metrics``.
"""

__version__ = "0.2.0"
