-- Core tables: instruments, ticks, exchange bars, market status, feed sessions and gaps.
CREATE EXTENSION IF NOT EXISTS timescaledb;

-- The instrument master, one row per contract per trading day (IST). Exchange
-- tokens are reused for other contracts after expiry, so a key's metadata is
-- only reliable for the day it was published; join ticks on the tick's IST day.
CREATE TABLE instruments (
    trading_day       date        NOT NULL,
    instrument_key    text        NOT NULL,
    segment           text        NOT NULL,
    exchange          text,
    name              text,
    trading_symbol    text,
    short_name        text,
    instrument_type   text,
    isin              text,
    exchange_token    text,
    lot_size          integer,
    minimum_lot       integer,
    freeze_quantity   double precision,
    tick_size         double precision,
    expiry            timestamptz,
    strike_price      double precision,
    weekly            boolean,
    underlying_symbol text,
    underlying_key    text,
    underlying_type   text,
    asset_symbol      text,
    asset_key         text,
    asset_type        text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument_key, trading_day)
);
CREATE INDEX instruments_day_idx ON instruments (trading_day, segment, instrument_type);

-- The latest published master: what "today's" keys mean.
CREATE VIEW instruments_current AS
SELECT * FROM instruments WHERE trading_day = (SELECT max(trading_day) FROM instruments);

-- One row per instrument update received. NULL means "this mode does not
-- carry the field"; 0 is a value (proto3 sends absent numbers as 0).
CREATE TABLE ticks (
    time            timestamptz      NOT NULL, -- last trade time (exchange); frame time if none
    instrument_key  text             NOT NULL,
    kind            text             NOT NULL, -- ltpc, option_greeks, full, full_d30, index
    snapshot        boolean          NOT NULL, -- from an initial_feed frame
    feed_time       timestamptz      NOT NULL, -- server send time of the frame (currentTs)
    received_at     timestamptz      NOT NULL, -- when the collector read the frame
    ltp             double precision NOT NULL,
    ltq             bigint,                    -- last trade quantity
    cp              double precision,          -- previous close
    volume          bigint,                    -- increase of vtt since the previous tick
    vtt             bigint,                    -- volume traded today (cumulative)
    oi              double precision,
    iv              double precision,
    atp             double precision,          -- average traded price
    tbq             double precision,          -- total buy quantity
    tsq             double precision,          -- total sell quantity
    bid_price       double precision,          -- best bid/ask
    bid_qty         bigint,
    ask_price       double precision,
    ask_qty         bigint,
    delta           double precision,
    theta           double precision,
    gamma           double precision,
    vega            double precision,
    rho             double precision,
    iep             double precision,          -- indicative equilibrium price (pre-open)
    bid_prices      double precision[],        -- full depth, best first (5 or 30 levels)
    bid_qtys        bigint[],
    ask_prices      double precision[],
    ask_qtys        bigint[]
);
-- One-day chunks: a full trading day of a 2000-key universe in full mode is a
-- few GB, so a day's chunk and its indexes stay in memory while it is written
-- (TimescaleDB's advice: recent chunks should fit in ~25% of RAM), and
-- retention and compression work in whole days.
SELECT create_hypertable('ticks', by_range('time', INTERVAL '1 day'));
-- "Latest ticks of an instrument" and "a day of one instrument" are both
-- range scans of this index; create_hypertable already made (time DESC) for
-- time-range scans across instruments. No unique index: it would cost every
-- insert a lookup, and exactly-once is enforced per batch by ingest_ledger.
CREATE INDEX ticks_instrument_time_idx ON ticks (instrument_key, time DESC);

-- The exchange's own OHLC bars from full mode (I1, I30, 1d), upserted.
CREATE TABLE exchange_bars (
    instrument_key text             NOT NULL,
    interval       text             NOT NULL, -- I1, I30, 1d
    bar_start      timestamptz      NOT NULL,
    open           double precision NOT NULL,
    high           double precision NOT NULL,
    low            double precision NOT NULL,
    close          double precision NOT NULL,
    volume         bigint           NOT NULL,
    updated_at     timestamptz      NOT NULL,
    PRIMARY KEY (instrument_key, interval, bar_start)
);
SELECT create_hypertable('exchange_bars', by_range('bar_start', INTERVAL '7 days'));

-- Market status changes per segment and session (normal, pre_open, cas).
CREATE TABLE market_status (
    segment     text        NOT NULL,
    session     text        NOT NULL,
    status      text        NOT NULL,
    time        timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (segment, session, time, status)
);

-- Each connection's life from subscribed to closed.
CREATE TABLE feed_sessions (
    connection      integer     NOT NULL,
    connected_at    timestamptz NOT NULL,
    disconnected_at timestamptz NOT NULL,
    close_reason    text        NOT NULL,
    PRIMARY KEY (connection, connected_at)
);

-- Spans when a connection was down while its segments were open: data may be missing.
CREATE TABLE feed_gaps (
    connection integer     NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL,
    segments   text[]      NOT NULL,
    reason     text        NOT NULL,
    PRIMARY KEY (connection, started_at)
);
