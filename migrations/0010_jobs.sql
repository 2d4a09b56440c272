-- Operator jobs (see src/jobs/): projection rebuilds and republishes, one row per run.
--
--   * `state` is 'running' while a keel process (`process`, its handle `owner`) runs the job; it
--     writes `done`, `total`, `rate` (events/s), `cursor` and `heartbeat_at` about once a
--     second, never per event, and ends the row 'done', 'failed' or 'cancelled'.
--   * A cancel request sets `cancel_requested_at` and `cancelled_by`; the runner reads it at its
--     next write and stops the job at a page boundary.
--   * A 'running' row whose heartbeat has aged past the threshold lost its process: any keel
--     serve process marks it 'interrupted', with `error` saying how to resume.
--   * A resumed job is a new row; `resumes` names the row it continues.
-- Operators start jobs by hand, so the table stays small; lists read it newest first.

CREATE TABLE jobs (
    id                   uuid             PRIMARY KEY,
    kind                 text             NOT NULL CHECK (kind IN ('rebuild', 'republish')),
    target               text             NOT NULL,
    params               jsonb            NOT NULL DEFAULT '{}',
    state                text             NOT NULL DEFAULT 'running'
                         CHECK (state IN ('running', 'done', 'failed', 'cancelled', 'interrupted')),
    started_by           text             NOT NULL,
    process              text             NOT NULL,
    owner                uuid             NOT NULL,
    resumes              uuid             REFERENCES jobs (id) ON DELETE SET NULL,
    done                 bigint           NOT NULL DEFAULT 0,
    total                bigint,
    rate                 double precision,
    cursor               text,
    report               jsonb,
    error                text,
    cancel_requested_at  timestamptz,
    cancelled_by         text,
    created_at           timestamptz      NOT NULL DEFAULT now(),
    updated_at           timestamptz      NOT NULL DEFAULT now(),
    heartbeat_at         timestamptz      NOT NULL DEFAULT now(),
    ended_at             timestamptz
);

CREATE INDEX jobs_newest ON jobs (created_at DESC, id DESC);
-- The sweep for lost runners reads running rows only.
CREATE INDEX jobs_running ON jobs (heartbeat_at) WHERE state = 'running';
