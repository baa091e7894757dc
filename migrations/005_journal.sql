-- The journal replaces the spool and the batch ledger.
--
-- Each feed connection appends every frame it reads to a journal on disk; the
-- writer commits each batch of rows in one transaction together with the
-- journal position it reached. On start it reads that position back and goes
-- on from there: a batch is stored once, whatever fails in between.
CREATE TABLE journal_positions (
    journal     text        PRIMARY KEY, -- the journal folder's id (a UUID in its "id" file)
    connection  integer     NOT NULL,    -- the connection that writes it
    position    bigint      NOT NULL,    -- every record before this byte is committed
    state       bytea,                   -- the sequencer's state at position (JSON), so a
                                         -- replay computes the same rows as the live run
    dirty_since timestamptz,             -- oldest tick committed since candles last looked
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE journal_positions IS
    'How far each connection''s journal is committed; written in the same transaction as the rows.';

GRANT SELECT, INSERT, UPDATE ON journal_positions TO collector_writer;
GRANT SELECT ON journal_positions TO collector_reader;

-- Where a dead letter came from in the journal (NULL for older ones).
ALTER TABLE dead_letters ADD COLUMN journal text, ADD COLUMN position bigint;

-- A gap knows the instruments whose data may be missing.
ALTER TABLE feed_gaps ADD COLUMN instruments text[] NOT NULL DEFAULT '{}';

DROP TABLE ingest_ledger;
