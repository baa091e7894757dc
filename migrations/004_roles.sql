-- Least-privilege roles. Both are group roles without login: deployments
-- create login users in them (docker compose does, from .env), e.g.
--   CREATE ROLE grafana LOGIN PASSWORD '...' IN ROLE collector_reader;
--
-- collector_reader: SELECT on everything users query (Grafana, analysts).
-- collector_writer: what `collector run` needs at run time (insert ticks and
--   the rest, upsert bars and instruments, refresh candles), no DDL. Run
--   migrations (and retention on the Apache build, which drops chunks) as the
--   tables' owner.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'collector_reader') THEN
        CREATE ROLE collector_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'collector_writer') THEN
        CREATE ROLE collector_writer NOLOGIN;
    END IF;
END
$do$;

GRANT USAGE ON SCHEMA public TO collector_reader, collector_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO collector_reader, collector_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO collector_reader, collector_writer;

GRANT INSERT ON ticks, market_status, feed_sessions, feed_gaps, ingest_ledger, dead_letters
    TO collector_writer;
GRANT INSERT, UPDATE ON exchange_bars, instruments TO collector_writer;
GRANT DELETE ON ingest_ledger TO collector_writer;
GRANT USAGE ON SEQUENCE dead_letters_id_seq TO collector_writer;
GRANT EXECUTE ON FUNCTION refresh_candles(timestamptz) TO collector_writer;
REVOKE EXECUTE ON FUNCTION refresh_candles(timestamptz) FROM PUBLIC;

DO $do$
DECLARE
    level text;
BEGIN
    -- On the scheduled path the candle levels are tables the writer refreshes.
    IF (SELECT value FROM storage_info WHERE key = 'candles') = 'scheduled_refresh' THEN
        FOREACH level IN ARRAY ARRAY['candles_1m', 'candles_5m', 'candles_15m', 'candles_1h', 'candles_1d'] LOOP
            EXECUTE format('GRANT INSERT, DELETE ON %I TO collector_writer', level);
        END LOOP;
    END IF;
END
$do$;
