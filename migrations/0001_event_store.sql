-- keel's event store: streams (one row per aggregate), events (the log) and the outbox.
--
-- Ordering model (see src/store/log.rs and docs/guarantees.md):
--   * `events.position` is a global identity, unique but NOT commit-ordered: a transaction that took
--     position 10 may commit after one that took position 11.
--   * `events.tx_id` is the writing transaction's id (xid8). Log readers order by (tx_id, position)
--     and only read rows whose tx_id is below the oldest transaction still running
--     (pg_snapshot_xmin), so an event can never commit "behind" a reader's cursor.
--   * `streams.last_tx_id` lets an append refuse to write an aggregate from a transaction whose id is
--     older than the aggregate's last writer, so (tx_id, position) order always agrees with each
--     aggregate's version order.

CREATE TABLE streams (
    aggregate_type text        NOT NULL,
    aggregate_id   uuid        NOT NULL,
    version        integer     NOT NULL CHECK (version > 0),
    last_tx_id     xid8        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE events (
    id             uuid        PRIMARY KEY,
    position       bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    aggregate_type text        NOT NULL,
    aggregate_id   uuid        NOT NULL,
    version        integer     NOT NULL CHECK (version > 0),
    event_type     text        NOT NULL,
    -- Filled by the schema registry: the schema that validated the payload.
    schema_id      integer,
    schema_version integer,
    payload        jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (aggregate_type, aggregate_id, version)
);

-- The gap-safe log order.
CREATE INDEX events_log_order ON events (tx_id, position);

-- Work for the relay: one row per event, written in the append transaction. Rows are removed once
-- every sink has acknowledged them, so the table stays small. The payload is read from `events`.
CREATE TABLE outbox (
    position       bigint      PRIMARY KEY,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   uuid        NOT NULL,
    event_type     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_log_order ON outbox (tx_id, position);
