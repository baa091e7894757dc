-- Gaps, complete: the market-holiday cache, each gap's fill state, candles
-- backfilled from Upstox, and candles_1m_complete. See the README, "Gaps and
-- backfill".

-- Upstox's market holidays (GET /v2/market/holidays), cached so that a
-- collector starting without network still knows which days were closed.
-- open_exchanges keeps Upstox's shape: [{"exchange", "start_time", "end_time"}]
-- with times in epoch milliseconds (special sessions, e.g. Muhurat trading).
CREATE TABLE market_holidays (
    day              date        PRIMARY KEY,
    description      text        NOT NULL DEFAULT '',
    holiday_type     text,
    closed_exchanges text[]      NOT NULL DEFAULT '{}',
    open_exchanges   jsonb       NOT NULL DEFAULT '[]',
    fetched_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE market_holidays IS
    'Upstox''s market holiday list, refreshed by the collector at start-up and daily.';

-- Each gap's fill state, kept by the backfill job.
--   pending     not filled yet (waiting for minutes to end, for the next run, or for Upstox)
--   filled      every minute without ticks has Upstox's candle, or had no trades
--   partial     some minutes could not be had (fill_detail says why), some could
--   unfillable  none could (fill_detail says why)
-- The minutes_* columns count instrument-minutes: one per instrument per
-- minute of the gap that is over and has no live tick of the instrument.
ALTER TABLE feed_gaps
    ADD COLUMN fill_status          text        NOT NULL DEFAULT 'pending'
        CHECK (fill_status IN ('pending', 'filled', 'partial', 'unfillable')),
    ADD COLUMN fill_detail          text,
    ADD COLUMN minutes_expected     integer,
    ADD COLUMN minutes_filled       integer     NOT NULL DEFAULT 0,
    ADD COLUMN minutes_no_trades    integer     NOT NULL DEFAULT 0,
    ADD COLUMN fill_attempts        integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_fill_attempt_at timestamptz,
    ADD COLUMN fill_progress        jsonb       NOT NULL DEFAULT '{}'; -- the job's bookkeeping
CREATE INDEX feed_gaps_pending_idx ON feed_gaps (ended_at) WHERE fill_status = 'pending';
CREATE INDEX feed_gaps_started_idx ON feed_gaps (started_at);

-- Upstox's 1-minute candles for minutes of gaps, as fetched: every minute of
-- a gap Upstox had a candle for, the minutes our ticks also cover included.
-- source says which endpoint answered: 'upstox_intraday' (today) or
-- 'upstox_historical' (earlier days).
CREATE TABLE candles_backfill (
    bucket         timestamptz      NOT NULL,
    instrument_key text             NOT NULL,
    open           double precision NOT NULL,
    high           double precision NOT NULL,
    low            double precision NOT NULL,
    close          double precision NOT NULL,
    volume         bigint           NOT NULL,
    oi             double precision,
    source         text             NOT NULL CHECK (source IN ('upstox_intraday', 'upstox_historical')),
    fetched_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument_key, bucket)
);
CREATE INDEX candles_backfill_bucket_idx ON candles_backfill (bucket);

-- One place for complete 1-minute candles: our own candle (candles_1m, from
-- ticks) where the minute has a live tick, Upstox's backfilled candle where it
-- has none. A reconnect snapshot is not a live tick: it repeats the last trade
-- made while we were away, with the whole gap's volume, so a minute that only
-- has snapshot ticks takes the backfilled candle when there is one. The same
-- view on both TimescaleDB flavours: candles_1m is a continuous aggregate on
-- one and a table the collector refreshes on the other.
CREATE VIEW candles_1m_complete AS
SELECT c.bucket, c.instrument_key, c.open, c.high, c.low, c.close, c.volume, 'ticks'::text AS source
FROM candles_1m c
WHERE NOT EXISTS (
    SELECT 1 FROM candles_backfill b
    WHERE b.instrument_key = c.instrument_key AND b.bucket = c.bucket
      AND NOT EXISTS (
          SELECT 1 FROM ticks t
          WHERE t.instrument_key = b.instrument_key AND t.time >= b.bucket
            AND t.time < b.bucket + INTERVAL '1 minute' AND NOT t.snapshot))
UNION ALL
SELECT b.bucket, b.instrument_key, b.open, b.high, b.low, b.close, b.volume, 'backfill'::text AS source
FROM candles_backfill b
WHERE NOT EXISTS (
    SELECT 1 FROM ticks t
    WHERE t.instrument_key = b.instrument_key AND t.time >= b.bucket
      AND t.time < b.bucket + INTERVAL '1 minute' AND NOT t.snapshot);
COMMENT ON VIEW candles_1m_complete IS
    'candles_1m where the minute has live ticks, else the candle backfilled from Upstox (source says which).';

GRANT SELECT ON market_holidays, candles_backfill, candles_1m_complete TO collector_reader, collector_writer;
GRANT INSERT, UPDATE, DELETE ON market_holidays TO collector_writer;
GRANT INSERT, UPDATE ON candles_backfill TO collector_writer;
GRANT UPDATE (fill_status, fill_detail, minutes_expected, minutes_filled, minutes_no_trades, fill_attempts,
              last_fill_attempt_at, fill_progress) ON feed_gaps TO collector_writer;
