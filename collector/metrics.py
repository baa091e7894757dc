"""Every Prometheus metric the collector exports, against an injected registry.

The collector is several processes (a supervisor, and a feed and a writer
process per connection), served as one ``/metrics`` by the supervisor through
prometheus_client's multiprocess mode (:mod:`collector.ipc.metrics`): each process
writes its values to memory-mapped files in one folder, the supervisor merges
them at scrape time. We use it rather than shipping samples between processes
ourselves because it is the library's own mechanism, costs no messages, and a
counter survives the crash of the process that incremented it (its file
stays). Each process creates only the series it owns (:class:`FeedMetrics`,
:class:`WriterMetrics`, :class:`SupervisorMetrics`); every gauge says how values of
several processes combine (``multiprocess_mode``). ``collector replay`` is one
process with a registry of its own (:class:`ReplayMetrics`).

A few series must be true exactly when the process that does the work cannot
say them (the journal lag while the database is away, whether a market is open
while nobody is connected, the database's own jobs): the supervisor computes
those at each scrape, and they are defined there (:mod:`collector.supervisor.scrape`).

Labels take values only from fixed sets: connection ids (0..connections-1),
modes, tick kinds, segments, tables, reason classes, job names. Never an
instrument key, a price or error text. Every known label combination is
created at start-up so that series exist at 0 before anything happens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collector.core.calendar import SEGMENTS
from collector.core.gaps import FILL_STATUSES
from collector.core.market import MARKET_STATUSES
from collector.core.master import REJECT_REASONS
from collector.core.records import FRAME_KINDS, MODES, TICK_KINDS
from collector.exceptions import UPSTOX_REASONS

__all__ = [
    "JOBS",
    "LATENCY_BUCKETS_S",
    "PROCESSES",
    "REST_APIS",
    "TABLES",
    "FeedMetrics",
    "Job",
    "Process",
    "ReplayMetrics",
    "RestApi",
    "SupervisorMetrics",
    "Table",
    "WriterMetrics",
]

PREFIX = "collector"
# Label values that exist for the metrics' sake, each set beside its type. The
# others come with what they name: modes, tick and frame kinds (core.records),
# segments (core.calendar), market statuses (core.market), gap states
# (core.gaps), master refusals (core.master), Upstox failures (exceptions).
Process = Literal["feed", "writer"]
PROCESSES: tuple[Process, ...] = get_args(Process)
Job = Literal["instrument_sync", "candle_refresh", "retention", "backfill", "holiday_sync"]
JOBS: tuple[Job, ...] = get_args(Job)
RestApi = Literal["authorize", "candles", "holidays"]
REST_APIS: tuple[RestApi, ...] = get_args(RestApi)
Table = Literal["ticks", "exchange_bars", "market_status", "feed_sessions", "feed_gaps"]
TABLES: tuple[Table, ...] = get_args(Table)
WriteFailure = Literal["transient", "permanent"]
WRITE_FAILURES: tuple[WriteFailure, ...] = get_args(WriteFailure)
# Why a new instrument master is not in force: refused whole, or held by the truncated-master guard.
MASTER_REJECTIONS = (*REJECT_REASONS, "held")
# One bucket sits exactly at each alert threshold and issue target (0.25 s, 1 s, 5 s).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
COPY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000)
# How late a replayed frame leaves against its schedule; 0.05 s is the tolerance docs/replay.md states.
REPLAY_LATENESS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

MultiprocessMode = Literal["livemax", "livemin", "livesum", "max", "mostrecent", "livemostrecent"]


class _Factory:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(f"{PREFIX}_{name}", doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Iterable[str] = (), *, mode: MultiprocessMode) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, list(labels), registry=self.registry, multiprocess_mode=mode)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(f"{PREFIX}_{name}", doc, buckets=buckets, registry=self.registry)


_CONN = ("connection",)


def _connected(f: _Factory) -> Gauge:
    # The supervisor holds 0 for every connection; a live feed process sets 1
    # while subscribed. A dead feed process's value goes with it (livemax).
    return f.gauge(
        "feed_connected", "1 while the connection is subscribed and reading", _CONN, mode="livemax"
    )


def _active(f: _Factory) -> Gauge:
    return f.gauge(
        "subscription_active_keys", "Keys subscribed on a live connection", (*_CONN, "mode"), mode="livemax"
    )


class FeedMetrics:
    """What a feed process (one connection: socket and journal) exports."""

    def __init__(self, registry: CollectorRegistry, *, connection: int = 0) -> None:
        f = _Factory(registry)
        c = str(connection)
        self.connected = _connected(f)
        self.connect_attempts = f.counter("feed_connect_attempts_total", "Connection attempts", _CONN)
        self.connect_failures = f.counter(
            "feed_connect_failures_total", "Failed connection attempts by reason class", (*_CONN, "reason")
        )
        self.reconnects = f.counter(
            "feed_reconnects_total", "Connections lost after being established", _CONN
        )
        self.last_frame = f.gauge(
            "feed_last_frame_timestamp_seconds", "Unix time of the last frame received", _CONN, mode="max"
        )
        self.pings = f.counter("feed_liveness_pings_total", "Pings sent to a silent socket", _CONN)
        self.pongs = f.counter("feed_liveness_pongs_total", "Pongs received for those pings", _CONN)
        self.sub_active = _active(f)
        self.frames = f.counter("frames_received_total", "Frames received, by frame type", (*_CONN, "kind"))
        self.bytes = f.counter("received_bytes_total", "Bytes of frames received", _CONN)
        self.text_messages = f.counter("text_messages_total", "Text frames from the server", _CONN)
        # Whether a segment is open is the supervisor's to say (collector.supervisor.scrape): it
        # knows when nobody hears Upstox. This is what Upstox said last.
        self.market_status = f.gauge(
            "market_status", "1 for the segment's status in Upstox's last market_info", ("segment", "status"),
            mode="mostrecent",
        )  # fmt: skip
        self.journal_full = f.gauge(
            "journal_full", "1 while reading is stopped: the journal is at its size bound or unwritable",
            _CONN, mode="livemax",
        )  # fmt: skip
        self.journal_write_errors = f.counter(
            "journal_write_errors_total", "Journal appends the disk refused", _CONN
        )
        for m in (self.connected, self.connect_attempts, self.reconnects, self.last_frame, self.pings,
                  self.pongs, self.bytes, self.text_messages, self.journal_full,
                  self.journal_write_errors):  # fmt: skip
            m.labels(c)
        for reason in UPSTOX_REASONS:
            self.connect_failures.labels(c, reason)
        for kind in FRAME_KINDS:
            self.frames.labels(c, kind)
        for mode in MODES:
            self.sub_active.labels(c, mode)

    def set_market_status(self, segment: str, status: str) -> None:
        if segment not in SEGMENTS or status not in MARKET_STATUSES:
            return  # unknown names would grow the label set without bound
        for s in MARKET_STATUSES:
            self.market_status.labels(segment, s).set(1 if s == status else 0)


class WriterMetrics:
    """What a writer process (one journal into the database) exports."""

    def __init__(self, registry: CollectorRegistry, *, connection: int = 0) -> None:
        f = _Factory(registry)
        c = str(connection)
        self.ticks = f.counter("ticks_decoded_total", "Ticks decoded by payload kind", ("kind",))
        self.decode_errors = f.counter("decode_errors_total", "Frames that failed to decode", _CONN)
        self.batches = f.counter("batches_written_total", "Batches committed")
        self.rows = f.counter("rows_written_total", "Rows committed by table", ("table",))
        self.batch_rows = f.histogram("batch_rows", "Ticks per committed batch", BATCH_BUCKETS)
        self.copy_seconds = f.histogram(
            "copy_duration_seconds", "Time to write and commit one batch", COPY_BUCKETS_S
        )
        self.write_failures = f.counter("write_failures_total", "Failed batch writes", ("kind",))
        # Any writer that cannot reach the database makes this 0 (livemin).
        self.database_up = f.gauge(
            "database_up", "1 while the writers can reach the database", mode="livemin"
        )
        self.dead_letters = f.counter("dead_letter_rows_total", "Rows the database rejected for good")
        self.duplicates = f.counter(
            "duplicates_suppressed_total", "Repeats dropped: snapshot ticks", ("kind",)
        )
        self.exchange_latency = f.histogram(
            "exchange_to_receive_seconds", "Server send time to receive time", LATENCY_BUCKETS_S
        )
        self.commit_latency = f.histogram(
            "receive_to_commit_seconds", "Receive time to database commit (oldest row of each batch)",
            LATENCY_BUCKETS_S,
        )  # fmt: skip
        # The journal's size, lag and committed position are read from its folder by the supervisor
        # at each scrape (collector.supervisor.scrape): true while this process cannot say them.
        self.journal_skipped = f.counter(
            "journal_corrupt_records_total", "Corrupt or torn journal stretches skipped", _CONN
        )
        self.journal_skipped_bytes = f.counter(
            "journal_skipped_bytes_total", "Bytes of corrupt or torn journal stretches skipped", _CONN
        )
        for m in (self.decode_errors, self.journal_skipped, self.journal_skipped_bytes):
            m.labels(c)
        for kind in TICK_KINDS:
            self.ticks.labels(kind)
        for table in TABLES:
            self.rows.labels(table)
        for failure in WRITE_FAILURES:
            self.write_failures.labels(failure)
        self.duplicates.labels("snapshot")


class SupervisorMetrics:
    """What the supervisor (universe, jobs, processes, token) exports."""

    def __init__(self, registry: CollectorRegistry, *, connections: int = 2, version: str = "0") -> None:
        f = _Factory(registry)
        self.connected = _connected(f)
        self.sub_active = _active(f)
        self.sub_requested = f.gauge(
            "subscription_requested_keys", "Keys requested per connection and mode", (*_CONN, "mode"),
            mode="livemax",
        )  # fmt: skip
        self.sub_rejected = f.gauge(
            "subscription_rejected_keys",
            "Keys of the universe that fit no connection",
            ("mode",),
            mode="livemax",
        )
        self.segment_keys = f.gauge(
            "feed_segment_keys", "Keys a connection carries per exchange segment", (*_CONN, "segment"),
            mode="livemax",
        )  # fmt: skip
        self.universe = f.gauge("universe_keys", "Keys in the configured universe", ("mode",), mode="livemax")
        self.universe_unknown = f.gauge(
            "universe_unknown_keys", "Keys of COLLECTOR_SUBSCRIPTIONS the instrument master does not list",
            mode="livemax",
        )  # fmt: skip
        self.limit = f.gauge(
            "subscription_limit_keys", "Upstox key limit per connection", ("mode", "scope"), mode="livemax"
        )
        self.process_up = f.gauge(
            "process_up", "1 while the connection's feed or writer process runs", ("process", *_CONN),
            mode="livemax",
        )  # fmt: skip
        self.process_restarts = f.counter(
            "process_restarts_total",
            "Feed or writer processes restarted after they exited",
            ("process", *_CONN),
        )
        # "task", not "job": Prometheus' own job label would clash on scrape.
        self.job_runs = f.counter("job_runs_total", "Scheduled job runs", ("task",))
        self.job_failures = f.counter("job_failures_total", "Scheduled job failures", ("task",))
        self.job_last_success = f.gauge(
            "job_last_success_timestamp_seconds", "Unix time of the job's last success", ("task",), mode="max"
        )
        self.token_expiry = f.gauge(
            "token_expiry_timestamp_seconds",
            "Unix time the access token expires (0: unknown)",
            mode="livemax",
        )
        self.rest_requests = f.counter("rest_requests_total", "Requests to Upstox's REST API", ("api",))
        # An Info metric cannot be merged across processes; a gauge at 1 reads the same.
        self.build = f.gauge("build_info", "Collector build", ("version",), mode="livemax")
        self.build.labels(version).set(1)
        self.init_connections(connections)
        for mode in MODES:
            self.sub_rejected.labels(mode)
            self.universe.labels(mode)
        for job in JOBS:
            self.job_runs.labels(job)
            self.job_failures.labels(job)
            self.job_last_success.labels(job)
        for api in REST_APIS:
            self.rest_requests.labels(api)
        # -- gaps and their backfill (collector/db/backfill.py), set by the supervisor only
        self.rest_failures = f.counter(
            "rest_failures_total", "Failed requests to Upstox's REST API, by reason class", ("api", "reason")
        )
        self.gaps = f.gauge(
            "gaps", "Recorded gaps by fill state (pending, filled, partial, unfillable)", ("status",),
            mode="livemax",
        )  # fmt: skip
        self.gap_oldest_pending = f.gauge(
            "backfill_oldest_pending_gap_timestamp_seconds",
            "Unix time the oldest gap not filled yet ended (0: none pending)",
            mode="livemax",
        )
        # Counted in candles (one instrument, one minute): "_minutes" would read as a time unit.
        self.backfill_pending_candles = f.gauge(
            "backfill_pending_candles",
            "1-minute candles that pending gaps still lack",
            mode="livemax",
        )
        self.backfill_candles = f.counter(
            "backfill_candles_total", "1-minute candles filled in from Upstox's candle APIs"
        )
        for api in REST_APIS:
            for failure in UPSTOX_REASONS:
                self.rest_failures.labels(api, failure)
        for status in FILL_STATUSES:
            self.gaps.labels(status)
        self.master_rows = f.gauge(
            "instrument_master_rows", "Rows of the instrument master in force (instruments_current)",
            mode="livemax",
        )  # fmt: skip
        self.master_skipped = f.gauge(
            "instrument_master_skipped_rows", "Rows of the last instrument master file that could not be used",
            mode="livemax",
        )  # fmt: skip
        self.master_rejected = f.gauge(
            "instrument_master_rejected",
            "1 while a new instrument master is not in force: refused (unreadable, bad_rows) or held back",
            ("reason",),
            mode="livemax",
        )
        for reason in MASTER_REJECTIONS:
            self.master_rejected.labels(reason)

    def init_connections(self, connections: int) -> None:
        for c in map(str, range(connections)):
            self.connected.labels(c).set(0)
            for process in PROCESSES:
                self.process_up.labels(process, c)
                self.process_restarts.labels(process, c)
            for segment in SEGMENTS:
                self.segment_keys.labels(c, segment)
            for mode in MODES:
                self.sub_requested.labels(c, mode)
                self.sub_active.labels(c, mode)


class ReplayMetrics:
    """What ``collector replay`` exports: its clock, its clients, what it sent."""

    def __init__(self, registry: CollectorRegistry) -> None:
        f = _Factory(registry)
        self.span_start = f.gauge(
            "replay_span_start_timestamp_seconds", "Unix time the replayed span starts", mode="livemax"
        )
        self.span_end = f.gauge(
            "replay_span_end_timestamp_seconds", "Unix time the replayed span ends (excluded)", mode="livemax"
        )
        # What the span holds, read once at start-up: the size of the job ahead.
        self.span_keys = f.gauge(
            "replay_span_keys", "Instrument keys with ticks in the replayed span", mode="livemax"
        )
        self.span_ticks = f.gauge("replay_span_ticks", "Ticks recorded in the replayed span", mode="livemax")
        self.position = f.gauge(
            "replay_position_timestamp_seconds",
            "The replay clock: the recorded time (received_at) replayed up to",
            mode="livemax",
        )
        self.speed = f.gauge(
            "replay_speed", "Recorded seconds replayed per second of wall time (+Inf: as fast as clients read)",
            mode="livemax",
        )  # fmt: skip
        self.finished = f.gauge("replay_finished", "1 once the whole span has been sent", mode="livemax")
        self.clients = f.gauge("replay_clients", "Sockets connected to the replay", mode="livemax")
        self.frames = f.counter("replay_frames_sent_total", "Frames sent to clients, by kind", ("kind",))
        self.feeds = f.counter(
            "replay_feeds_sent_total", "Instrument updates (feeds entries) sent to clients"
        )
        self.fallbacks = f.counter(
            "replay_mode_fallbacks_total",
            "Keys subscribed in a richer mode than recorded, served in the recorded one",
        )
        self.lateness = f.histogram(
            "replay_lateness_seconds",
            "How long after its scheduled time a recorded frame left (speed N only)",
            REPLAY_LATENESS_BUCKETS_S,
        )
        for kind in FRAME_KINDS:
            self.frames.labels(kind)
