-- Candles from ticks: candles_1m, and candles_5m, _15m, _1h, _1d built on it.
--
-- Each level's query is written once, as the view candles_<level>_source.
-- Where TimescaleDB has continuous aggregates (licence "timescale", as in the
-- timescale/timescaledb image) the level becomes a continuous aggregate whose
-- definition is that view's own text, with real-time aggregation. Where it has
-- not (the Apache-licensed build in Debian, some managed services) the level
-- is a hypertable of the same name and columns, refreshed incrementally by the
-- collector's scheduler through refresh_candles(). Users query candles_<level>
-- the same way on both.
--
-- Rules (see the README, "Candles"):
-- * open/close are the first/last ltp by trade time, high/low the extremes;
-- * volume is the sum of ticks.volume, the increase of cumulative volume (vtt)
--   per tick, so a repeated reconnect snapshot (volume 0, or suppressed by the
--   collector) never counts twice; ltpc and index ticks carry no volume;
-- * ticks is the number of ticks in the bucket;
-- * candles_1d buckets start at 00:00 UTC (05:30 IST). No Indian market trades
--   between 00:00 and 05:30 IST, so each bucket holds exactly one IST trading
--   day and its date is that trading day.

CREATE TABLE storage_info (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE VIEW candles_1m_source AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       instrument_key,
       first(ltp, time)      AS open,
       max(ltp)              AS high,
       min(ltp)              AS low,
       last(ltp, time)       AS close,
       sum(volume)::bigint   AS volume,
       count(*)              AS ticks
FROM ticks
GROUP BY 1, 2;

CREATE FUNCTION collector_materialize(name text, source text, chunk interval, policy_start interval,
                                      policy_end interval, every interval)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    definition text := rtrim(btrim(pg_get_viewdef(source::regclass)), ';');
BEGIN
    IF current_setting('timescaledb.license', true) = 'timescale' THEN
        EXECUTE format(
            'CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous, '
            'timescaledb.materialized_only = false) AS %s WITH NO DATA', name, definition);
        PERFORM add_continuous_aggregate_policy(name::regclass, start_offset => policy_start,
            end_offset => policy_end, schedule_interval => every);
    ELSE
        EXECUTE format('CREATE TABLE %I AS SELECT * FROM %I WITH NO DATA', name, source);
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (instrument_key, bucket)', name);
        PERFORM create_hypertable(name::regclass, by_range('bucket', chunk));
    END IF;
END
$fn$;

SELECT collector_materialize('candles_1m', 'candles_1m_source', INTERVAL '7 days',
                             INTERVAL '3 days', INTERVAL '1 minute', INTERVAL '1 minute');

CREATE VIEW candles_5m_source AS
SELECT time_bucket(INTERVAL '5 minutes', bucket) AS bucket, instrument_key,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low, last(close, bucket) AS close,
       sum(volume)::bigint AS volume, sum(ticks)::bigint AS ticks
FROM candles_1m GROUP BY 1, 2;
SELECT collector_materialize('candles_5m', 'candles_5m_source', INTERVAL '30 days',
                             INTERVAL '3 days', INTERVAL '5 minutes', INTERVAL '5 minutes');

CREATE VIEW candles_15m_source AS
SELECT time_bucket(INTERVAL '15 minutes', bucket) AS bucket, instrument_key,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low, last(close, bucket) AS close,
       sum(volume)::bigint AS volume, sum(ticks)::bigint AS ticks
FROM candles_5m GROUP BY 1, 2;
SELECT collector_materialize('candles_15m', 'candles_15m_source', INTERVAL '90 days',
                             INTERVAL '3 days', INTERVAL '15 minutes', INTERVAL '15 minutes');

CREATE VIEW candles_1h_source AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket, instrument_key,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low, last(close, bucket) AS close,
       sum(volume)::bigint AS volume, sum(ticks)::bigint AS ticks
FROM candles_15m GROUP BY 1, 2;
SELECT collector_materialize('candles_1h', 'candles_1h_source', INTERVAL '180 days',
                             INTERVAL '7 days', INTERVAL '1 hour', INTERVAL '30 minutes');

CREATE VIEW candles_1d_source AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket, instrument_key,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low, last(close, bucket) AS close,
       sum(volume)::bigint AS volume, sum(ticks)::bigint AS ticks
FROM candles_1h GROUP BY 1, 2;
SELECT collector_materialize('candles_1d', 'candles_1d_source', INTERVAL '365 days',
                             INTERVAL '30 days', INTERVAL '1 day', INTERVAL '1 hour');

DROP FUNCTION collector_materialize(text, text, interval, interval, interval, interval);

-- Incremental refresh for the scheduled path: recompute every bucket of every
-- level that starts at or after ``since`` (aligned down to the level's bucket),
-- from the level below, in one transaction. A no-op for continuous aggregates.
CREATE FUNCTION refresh_candles(since timestamptz) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    lvl record;
    start_at timestamptz;
BEGIN
    IF current_setting('timescaledb.license', true) = 'timescale' THEN
        RETURN;
    END IF;
    FOR lvl IN SELECT * FROM (VALUES
        (1, 'candles_1m', INTERVAL '1 minute'), (2, 'candles_5m', INTERVAL '5 minutes'),
        (3, 'candles_15m', INTERVAL '15 minutes'), (4, 'candles_1h', INTERVAL '1 hour'),
        (5, 'candles_1d', INTERVAL '1 day')) AS v(ord, name, width) ORDER BY ord
    LOOP
        start_at := time_bucket(lvl.width, since);
        EXECUTE format('DELETE FROM %I WHERE bucket >= $1', lvl.name) USING start_at;
        EXECUTE format('INSERT INTO %I SELECT * FROM %I WHERE bucket >= $1', lvl.name, lvl.name || '_source')
            USING start_at;
    END LOOP;
END
$fn$;

DO $do$
BEGIN
    IF current_setting('timescaledb.license', true) = 'timescale' THEN
        INSERT INTO storage_info VALUES ('candles', 'continuous_aggregates');
        -- Compress day-old chunks, one segment per instrument: the "day of one
        -- instrument" query then reads one compressed segment.
        ALTER TABLE ticks SET (timescaledb.compress, timescaledb.compress_segmentby = 'instrument_key',
                               timescaledb.compress_orderby = 'time DESC');
        PERFORM add_compression_policy('ticks', INTERVAL '2 days');
        RAISE NOTICE 'candles: continuous aggregates with real-time aggregation; ticks compressed after 2 days';
    ELSE
        INSERT INTO storage_info VALUES ('candles', 'scheduled_refresh');
        RAISE NOTICE 'candles: tables refreshed by the collector (this TimescaleDB has no continuous aggregates)';
    END IF;
END
$do$;
