-- What the writer needs for exactly-once delivery and rejected rows.

-- One row per committed batch, inserted in the batch's own transaction. A
-- retried batch (after an ambiguous failure or a spool replay) finds its id
-- here and is skipped, so no tick is stored twice.
CREATE TABLE ingest_ledger (
    batch_id     uuid        PRIMARY KEY,
    rows         integer     NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_ledger_committed_idx ON ingest_ledger (committed_at);

-- Rows the database rejected for good (bad values), with the reason.
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    table_name  text        NOT NULL,
    reason      text        NOT NULL,
    row_data    jsonb       NOT NULL,
    batch_id    uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);
