-- The relay's state (see src/relay/mod.rs and docs/guarantees.md).
--
--   * Every outbox row belongs to one of 16 relay partitions, by a hash of its aggregate id, so all
--     of one aggregate's rows are in one partition.
--   * A relay process works only on the partitions it holds a lease on (relay_leases), so no two
--     relays publish the same aggregate at the same time.
--   * Each sink (kafka, redis) keeps its own cursor per partition (relay_progress), in the log's
--     gap-safe (tx_id, position) order. An outage of one sink never holds the other back.
--   * Rows every sink has passed are deleted, so the outbox stays small.
--   * A row a sink cannot publish is parked (relay_parked), and the same aggregate's later rows are
--     held behind it there, in order.
--
-- The partition count is fixed here. Changing it needs a drained outbox and a new migration.

ALTER TABLE outbox
    ADD COLUMN partition smallint NOT NULL
        GENERATED ALWAYS AS ((uuid_hash_extended(aggregate_id, 0) & 15)::smallint) STORED;

CREATE INDEX outbox_relay_order ON outbox (partition, tx_id, position);

CREATE TABLE relay_leases (
    partition   smallint    PRIMARY KEY,
    owner       uuid,
    owner_name  text,
    lease_until timestamptz NOT NULL DEFAULT '-infinity'
);

INSERT INTO relay_leases (partition) SELECT generate_series(0, 15);

-- Live relay processes, so that each can take its fair share of partitions.
CREATE TABLE relay_members (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE relay_progress (
    sink       text        NOT NULL,
    partition  smallint    NOT NULL REFERENCES relay_leases (partition),
    tx_id      xid8        NOT NULL DEFAULT '0',
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, partition)
);

INSERT INTO relay_progress (sink, partition)
SELECT sink, p FROM unnest(ARRAY['kafka', 'redis']) AS sink, generate_series(0, 15) AS p;

-- state: 'parked' waits for an operator (keel outbox retry/skip); 'held' waits behind a parked row
-- of the same aggregate; 'retry' was released by an operator and is re-sent first.
CREATE TABLE relay_parked (
    sink           text        NOT NULL,
    position       bigint      NOT NULL,
    tx_id          xid8        NOT NULL,
    partition      smallint    NOT NULL,
    event_id       uuid        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   uuid        NOT NULL,
    event_type     text        NOT NULL,
    state          text        NOT NULL CHECK (state IN ('parked', 'held', 'retry')),
    error_class    text,
    error          text,
    attempts       integer     NOT NULL DEFAULT 0,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, position)
);

CREATE INDEX relay_parked_aggregate ON relay_parked (sink, aggregate_type, aggregate_id, position);
CREATE INDEX relay_parked_partition ON relay_parked (sink, partition);
