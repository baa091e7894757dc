-- The columnstore under its current names, and late candles refreshed by the database itself.
--
-- Only where TimescaleDB has the Timescale License features (storage_info says
-- 'continuous_aggregates', as in the timescale/timescaledb image); a no-op on the
-- Apache-licensed build.
--
-- 1. ticks: TimescaleDB 2.18 renamed compression to the columnstore and deprecated the old
--    names that 003 used (003 is applied in deployments and checksummed, so it stays). Where
--    the server has the new API, restate 003's settings and policy with it: same effect, one
--    segment per instrument ordered newest first, day chunks converted after 2 days.
--    On an older server 003's compression settings and policy stay as they are.
--
-- 2. Late candles. A journal replayed after an outage inserts ticks older than the refresh
--    policies' windows (003: 3 days for candles_1m); the collector marks them
--    (journal_positions.dirty_since) and its candle job reads the marks. But
--    refresh_continuous_aggregate() needs the continuous aggregate's owner (TimescaleDB
--    checks ownership: tsl/src/continuous_aggs/refresh.c) and refuses to run inside a
--    function, so a SECURITY DEFINER wrapper cannot lend it to collector_writer, and making the
--    writer an owner would give it DDL. Instead the collector's job hands the oldest mark over
--    as a row of candle_refresh_requests (collector_writer may insert there), and a
--    TimescaleDB job, which runs as the role that ran this migration (the owner), refreshes
--    every level from there, bottom up (each level is built on the one below), then deletes the
--    requests it served. A failed refresh deletes nothing, so the next run tries again.

CREATE TABLE candle_refresh_requests (
    id           bigserial   PRIMARY KEY,
    since        timestamptz NOT NULL,              -- refresh every level from this time on
    requested_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE candle_refresh_requests IS
    'Late ticks waiting for the continuous aggregates to be refreshed (migration 008); empty on the Apache build.';

CREATE PROCEDURE collector_refresh_late_candles(job_id integer, config jsonb)
LANGUAGE plpgsql AS $proc$
DECLARE
    upto bigint;
    since timestamptz;
    lvl record;
BEGIN
    SELECT max(id), min(r.since) INTO upto, since FROM candle_refresh_requests r;
    IF upto IS NULL THEN
        RETURN;
    END IF;
    FOR lvl IN SELECT * FROM (VALUES
        (1, 'candles_1m', INTERVAL '1 minute'), (2, 'candles_5m', INTERVAL '5 minutes'),
        (3, 'candles_15m', INTERVAL '15 minutes'), (4, 'candles_1h', INTERVAL '1 hour'),
        (5, 'candles_1d', INTERVAL '1 day')) AS v(ord, name, width) ORDER BY ord
    LOOP
        -- A refresh window covers only whole buckets inside it: start at the bucket holding `since`.
        CALL refresh_continuous_aggregate(lvl.name::regclass, time_bucket(lvl.width, since), NULL);
    END LOOP;
    DELETE FROM candle_refresh_requests WHERE id <= upto;
END
$proc$;
COMMENT ON PROCEDURE collector_refresh_late_candles(integer, jsonb) IS
    'TimescaleDB job (migration 008): refresh every candle level from the oldest candle_refresh_requests row.';
REVOKE EXECUTE ON PROCEDURE collector_refresh_late_candles(integer, jsonb) FROM PUBLIC;

GRANT SELECT, INSERT ON candle_refresh_requests TO collector_writer;
GRANT USAGE ON SEQUENCE candle_refresh_requests_id_seq TO collector_writer;
GRANT SELECT ON candle_refresh_requests TO collector_reader;

DO $do$
DECLARE
    version int[] := string_to_array(
        split_part((SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'), '-', 1), '.')::int[];
BEGIN
    IF (SELECT value FROM storage_info WHERE key = 'candles') <> 'continuous_aggregates' THEN
        RAISE NOTICE 'columnstore: not available on this TimescaleDB (Apache-licensed build)';
        RETURN;
    END IF;
    IF version >= ARRAY[2, 18] THEN
        ALTER TABLE ticks SET (timescaledb.enable_columnstore = true,
                               timescaledb.segmentby = 'instrument_key', timescaledb.orderby = 'time DESC');
        CALL remove_columnstore_policy('ticks', if_exists => true);
        CALL add_columnstore_policy('ticks', after => INTERVAL '2 days');
        RAISE NOTICE 'columnstore: ticks converted after 2 days (columnstore API)';
    ELSE
        RAISE NOTICE 'columnstore: TimescaleDB % predates the columnstore API; 003''s compression policy stays',
            array_to_string(version, '.');
    END IF;
    PERFORM add_job('collector_refresh_late_candles', INTERVAL '1 minute');
END
$do$;
