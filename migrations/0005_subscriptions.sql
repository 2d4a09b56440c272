-- Subscriptions: the consumer runtime's dead-letter store and delivery markers, and projections'
-- offsets and status (see src/consumer/ and src/projection/, and docs/guarantees.md).

-- Records a consumer group could not handle. One row per record (group, topic, partition, offset):
--   parked     the handler failed permanently, ran out of retries, or the consumer crashed on it
--              repeatedly; the key's later records wait behind it
--   held       a later record of a parked key, kept in order behind it
--   retry      asked for by `keel dlq retry|skip`; the running consumer redelivers these in order
--   delivered  redelivered successfully
--   skipped    dropped by `keel dlq skip`
CREATE TABLE consumer_dlq (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id       text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    kafka_offset   bigint      NOT NULL,
    -- The record key as text ('' when the record had none); keel's keys are aggregate ids.
    record_key     text        NOT NULL,
    state          text        NOT NULL
        CHECK (state IN ('parked', 'held', 'retry', 'delivered', 'skipped')),
    -- permanent, retries_exhausted, crash_loop, undecodable or held.
    reason_class   text        NOT NULL,
    reason         text        NOT NULL,
    attempts       integer     NOT NULL DEFAULT 0,
    event_id       uuid,
    event_type     text,
    aggregate_id   uuid,
    version        integer,
    headers        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    value          bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, topic, partition, kafka_offset)
);

CREATE INDEX consumer_dlq_open ON consumer_dlq (group_id, topic, partition, kafka_offset)
    WHERE state IN ('parked', 'held', 'retry');

-- The batch each consumer partition is working on, written before the handler runs. A consumer
-- that finds itself starting at the same offset again crashed (or was stopped) there: after
-- `crash_attempts` such starts it parks the record instead of handling it.
CREATE TABLE consumer_deliveries (
    group_id     text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    first_offset bigint      NOT NULL,
    last_offset  bigint      NOT NULL,
    attempts     integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Projections: one row each, locked FOR SHARE by every batch a runner applies and FOR UPDATE by a
-- rebuild's swap, so the swap never interleaves with a live batch.
CREATE TABLE projections (
    name              text        PRIMARY KEY,
    state             text        NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'stopped', 'failing')),
    events_applied    bigint      NOT NULL DEFAULT 0,
    last_event_at     timestamptz,
    last_applied_at   timestamptz,
    lag_records       bigint,
    error             text,
    rebuilt_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The next Kafka offset each projection applies, per partition, written in the same transaction
-- as the read model. Runners seek here on assignment and never use Kafka's committed offsets.
CREATE TABLE projection_offsets (
    projection  text   NOT NULL REFERENCES projections (name) ON DELETE CASCADE,
    topic       text   NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (projection, topic, partition)
);
