"""Every Prometheus metric the collector exports, against an injected registry.

Labels take values only from fixed sets: connection ids (0..connections-1),
modes, tick kinds, segments, tables, reason classes, job names. Never an
instrument key, a price or error text. Every known label combination is
created at start-up so that series exist at 0 before anything happens.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from collector.exceptions import CONNECT_REASONS
from collector.records import MODES, TICK_KINDS

__all__ = ["LATENCY_BUCKETS_S", "SEGMENTS", "Metrics"]

PREFIX = "collector"
SEGMENTS = (
    "NSE_EQ", "NSE_FO", "NSE_INDEX", "BSE_EQ", "BSE_FO", "BSE_INDEX",
    "MCX_FO", "MCX_INDEX", "NCD_FO", "BCD_FO", "NSE_COM",
)  # fmt: skip
MARKET_STATUSES = (
    "PRE_OPEN_START", "PRE_OPEN_END", "NORMAL_OPEN", "NORMAL_CLOSE", "CLOSING_START", "CLOSING_END",
)  # fmt: skip
TABLES = ("ticks", "exchange_bars", "market_status", "feed_sessions", "feed_gaps")
JOBS = ("instrument_sync", "candle_refresh", "retention")
# One bucket sits exactly at each alert threshold (1 s and 5 s; see prometheus/rules).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COPY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000)


class Metrics:
    """The collector's metrics; one instance per process (or per test)."""

    def __init__(self, registry: CollectorRegistry, *, connections: int = 2, version: str = "0") -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, list(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, list(labels), registry=registry)

        conn = ("connection",)
        # Connections
        self.connected = gauge("feed_connected", "1 while the connection is subscribed and reading", conn)
        self.connect_attempts = counter("feed_connect_attempts_total", "Connection attempts", conn)
        self.connect_failures = counter(
            "feed_connect_failures_total", "Failed connection attempts by reason class", (*conn, "reason")
        )
        self.reconnects = counter("feed_reconnects_total", "Connections lost after being established", conn)
        self.last_frame = gauge(
            "feed_last_frame_timestamp_seconds", "Unix time of the last frame received", conn
        )
        self.pings = counter("feed_liveness_pings_total", "Pings sent to a silent socket", conn)
        self.pongs = counter("feed_liveness_pongs_total", "Pongs received for those pings", conn)
        # Subscriptions
        self.sub_requested = gauge(
            "subscription_requested_keys", "Keys requested per connection and mode", (*conn, "mode")
        )
        self.sub_active = gauge(
            "subscription_active_keys", "Keys subscribed on a live connection", (*conn, "mode")
        )
        self.sub_rejected = gauge(
            "subscription_rejected_keys", "Keys of the universe that fit no connection", ("mode",)
        )
        self.segment_keys = gauge(
            "feed_segment_keys", "Keys a connection carries per exchange segment", (*conn, "segment")
        )
        self.universe = gauge("universe_keys", "Keys in the configured universe", ("mode",))
        self.limit = gauge("subscription_limit_keys", "Upstox key limit per connection", ("mode", "scope"))
        # Market
        self.market_open = gauge("market_open", "1 while the segment's market is open", ("segment",))
        self.market_status = gauge(
            "market_status", "1 for the segment's current status", ("segment", "status")
        )
        # Pipeline
        self.frames = counter("frames_received_total", "Binary frames received", (*conn, "kind"))
        self.bytes = counter("received_bytes_total", "Bytes of frames received", conn)
        self.ticks = counter("ticks_decoded_total", "Ticks decoded by payload kind", ("kind",))
        self.decode_errors = counter("decode_errors_total", "Frames that failed to decode", conn)
        self.text_messages = counter("text_messages_total", "Text frames from the server", conn)
        self.queue_depth = gauge("queue_depth_frames", "Frames waiting between reader and writer")
        self.pending_rows = gauge("pending_rows", "Rows accepted and held in memory, not yet committed")
        self.batches = counter("batches_written_total", "Batches committed")
        self.rows = counter("rows_written_total", "Rows committed by table", ("table",))
        self.batch_rows = Histogram(
            f"{PREFIX}_batch_rows", "Ticks per committed batch", buckets=BATCH_BUCKETS, registry=registry
        )
        self.copy_seconds = Histogram(
            f"{PREFIX}_copy_duration_seconds", "Time to write and commit one batch",
            buckets=COPY_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.write_failures = counter("write_failures_total", "Failed batch writes", ("kind",))
        self.database_up = gauge("database_up", "1 while the writer can reach the database")
        self.dead_letters = counter("dead_letter_rows_total", "Rows the database rejected for good")
        self.spool_bytes = gauge("spool_bytes", "Bytes in the disk spool")
        self.spool_rows = gauge("spool_rows", "Rows in the disk spool")
        self.replayed = counter("replayed_rows_total", "Rows written from the disk spool")
        self.duplicates = counter(
            "duplicates_suppressed_total", "Repeats dropped: snapshot ticks or batches", ("kind",)
        )
        # Latency
        self.exchange_latency = Histogram(
            f"{PREFIX}_exchange_to_receive_seconds", "Server send time to receive time",
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.commit_latency = Histogram(
            f"{PREFIX}_receive_to_commit_seconds", "Receive time to database commit",
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )  # fmt: skip
        # Jobs
        # "task", not "job": Prometheus' own job label would clash on scrape.
        self.job_runs = counter("job_runs_total", "Scheduled job runs", ("task",))
        self.job_failures = counter("job_failures_total", "Scheduled job failures", ("task",))
        self.job_last_success = gauge(
            "job_last_success_timestamp_seconds", "Unix time of the job's last success", ("task",)
        )
        # Token and build
        self.token_expiry = gauge(
            "token_expiry_timestamp_seconds", "Unix time the access token expires (0: unknown)"
        )
        self.build = Info(f"{PREFIX}_build", "Collector build", registry=registry)
        self.build.info({"version": version})
        self._init_series(connections)

    def _init_series(self, connections: int) -> None:
        for c in map(str, range(connections)):
            for m in (self.connected, self.connect_attempts, self.reconnects, self.last_frame,
                      self.pings, self.pongs, self.bytes, self.decode_errors, self.text_messages):  # fmt: skip
                m.labels(c)
            for reason in CONNECT_REASONS:
                self.connect_failures.labels(c, reason)
            for kind in ("initial_feed", "live_feed", "market_info"):
                self.frames.labels(c, kind)
            for segment in SEGMENTS:
                self.segment_keys.labels(c, segment)
            for mode in MODES:
                self.sub_requested.labels(c, mode)
                self.sub_active.labels(c, mode)
        for mode in MODES:
            self.sub_rejected.labels(mode)
            self.universe.labels(mode)
        for kind in TICK_KINDS:
            self.ticks.labels(kind)
        for segment in SEGMENTS:
            self.market_open.labels(segment)
            for status in MARKET_STATUSES:
                self.market_status.labels(segment, status)
        for table in TABLES:
            self.rows.labels(table)
        for kind in ("transient", "permanent"):
            self.write_failures.labels(kind)
        for kind in ("snapshot", "batch"):
            self.duplicates.labels(kind)
        for job in JOBS:
            self.job_runs.labels(job)
            self.job_failures.labels(job)
            self.job_last_success.labels(job)

    def set_market_status(self, segment: str, status: str, is_open: bool) -> None:
        if segment not in SEGMENTS or status not in MARKET_STATUSES:
            return  # unknown names would grow the label set without bound
        self.market_open.labels(segment).set(1 if is_open else 0)
        for s in MARKET_STATUSES:
            self.market_status.labels(segment, s).set(1 if s == status else 0)
