-- Sagas (process managers): instances, their timeouts and associations, and the per-instance
-- inbox that holds a parked instance's inputs. A saga's Kafka offsets and the versions of the
-- source aggregates it has seen live where a projection's do (projection `saga_<name>`,
-- `projection_offsets` and `keel_proj_saga_<name>.keel_applied`), because its input runner is
-- the projection runner (see src/saga/mod.rs).

-- Each saga this database has run, and where its history starts: a saga first deployed with
-- `sagas.start_from = "now"` (the default) ignores inputs created before that moment, so that a
-- new saga does not act on everything still retained in Kafka.
CREATE TABLE sagas (
    name        text        PRIMARY KEY,
    start_after timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE saga_instances (
    saga           text        NOT NULL,
    instance_id    uuid        NOT NULL,
    correlation    text        NOT NULL,
    status         text        NOT NULL
        CHECK (status IN ('active', 'compensating', 'parked', 'completed', 'compensated', 'failed')),
    -- The status a parked instance returns to when it is redriven (`new` for one that parked on
    -- its first input, before it had a state).
    resume_status  text
        CHECK (resume_status IN ('new', 'active', 'compensating')),
    state          jsonb,
    state_version  integer     NOT NULL DEFAULT 1,
    -- The compensations remembered by forward steps, oldest first.
    compensations  jsonb       NOT NULL DEFAULT '[]',
    -- The version of the instance's stream (aggregate type `saga.<name>`): its steps and outputs.
    version        integer     NOT NULL DEFAULT 0,
    steps          integer     NOT NULL DEFAULT 0,
    error          text,
    retry_requested_at timestamptz,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    PRIMARY KEY (saga, instance_id),
    UNIQUE (saga, correlation)
);
CREATE INDEX saga_instances_status ON saga_instances (saga, status, updated_at);
CREATE INDEX saga_instances_redrive ON saga_instances (saga) WHERE retry_requested_at IS NOT NULL;

CREATE TABLE saga_associations (
    saga        text NOT NULL,
    key         text NOT NULL,
    value       text NOT NULL,
    instance_id uuid NOT NULL,
    PRIMARY KEY (saga, key, value, instance_id)
);
CREATE INDEX saga_associations_instance ON saga_associations (saga, instance_id);

-- One pending timeout per (instance, name): scheduling it again replaces it. Due times are
-- PostgreSQL's clock.
CREATE TABLE saga_timeouts (
    saga        text        NOT NULL,
    instance_id uuid        NOT NULL,
    name        text        NOT NULL,
    due_at      timestamptz NOT NULL,
    payload     jsonb       NOT NULL DEFAULT 'null',
    set_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, instance_id, name)
);
CREATE INDEX saga_timeouts_due ON saga_timeouts (saga, due_at);

-- The per-instance dead-letter store: the input a parked instance failed on (`parked`) and every
-- later input for it, from any topic, including due timeouts (`held`), in arrival order.
CREATE TABLE saga_inbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga        text        NOT NULL,
    instance_id uuid        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('event', 'timeout')),
    state       text        NOT NULL CHECK (state IN ('parked', 'held')),
    reason      text,
    input       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_inbox_instance ON saga_inbox (saga, instance_id, id);

-- Crash-loop detection. Before a batch is stepped, each of its deliveries (input, instance) is
-- counted as `seen`, outside the batch's transaction, so that a crash keeps the count; a committed
-- batch deletes its rows. A delivery seen before is a suspect: its start and end are noted too,
-- and one that started `CRASH_ATTEMPTS` times without ending (the process died inside it) parks
-- its instance as `crash_loop`.
CREATE TABLE saga_deliveries (
    saga        text    NOT NULL,
    event_id    uuid    NOT NULL,
    instance_id uuid    NOT NULL,
    seen        integer NOT NULL DEFAULT 0,
    starts      integer NOT NULL DEFAULT 0,
    ends        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (saga, event_id, instance_id)
);
