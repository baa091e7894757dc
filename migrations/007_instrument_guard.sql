-- The truncated-master guard: a day's instrument master becomes current only once accepted.
--
-- Until now instruments_current was simply the latest trading_day stored, so a
-- one-row master synced on a new day (a partial download at 06:15) became the
-- whole master and the daily sync resolved the universe from it. Now every
-- trading day stored has a row here saying whether it was accepted; the
-- collector holds back a new day whose master is much smaller than the last
-- accepted day's (COLLECTOR_INSTRUMENTS_MIN_RATIO), and `collector instruments
-- sync --force` accepts one by hand. Held rows stay in `instruments` for
-- inspection; instruments_current keeps its name and shows the latest accepted
-- day.
CREATE TABLE instrument_masters (
    trading_day    date        PRIMARY KEY,
    status         text        NOT NULL CHECK (status IN ('accepted', 'forced', 'held')),
    row_count      integer     NOT NULL, -- rows stored for the day (every load of it)
    reference_day  date,                 -- the accepted day it was compared with
    reference_rows integer,              -- and that day's rows
    skipped_rows   integer     NOT NULL DEFAULT 0, -- rows of the last file that could not be used
    loaded_at      timestamptz NOT NULL DEFAULT now(), -- last load of the day
    accepted_at    timestamptz           -- when it became current (NULL while held)
);
COMMENT ON TABLE instrument_masters IS
    'One row per trading day of the instrument master: accepted and forced days are current, held ones are not.';

-- Days stored before the guard existed were current: they stay accepted.
INSERT INTO instrument_masters (trading_day, status, row_count, loaded_at, accepted_at)
SELECT trading_day, 'accepted', count(*), max(updated_at), max(updated_at)
FROM instruments GROUP BY trading_day;

-- Same name and columns as before; only the day it picks changed.
CREATE OR REPLACE VIEW instruments_current AS
SELECT * FROM instruments
WHERE trading_day = (SELECT max(trading_day) FROM instrument_masters WHERE status <> 'held');

GRANT SELECT ON instrument_masters TO collector_reader;
GRANT SELECT, INSERT, UPDATE ON instrument_masters TO collector_writer;
