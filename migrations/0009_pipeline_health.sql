-- Pipeline health (see src/health/ and docs/guarantees.md).
--
--   * Each running stage (a relay sink, a projection, a consumer group member) beats here while
--     its loop turns, even when idle: `beat_at` is when its loop last turned, written by a task
--     beside the loop, so a stuck loop shows an old beat although its process answers. A clean
--     stop deletes the row; a killed process leaves it ageing, and every keel process's monitor
--     reports the stage unhealthy once no instance of it has beaten for observability.stall_after_ms.
--   * `detail` holds what the stage reports of itself (the partitions it holds, the topics it reads).
--   * Canaries: one row says when the newest canary was written (whichever keel process wins the
--     slot writes it), one row per sink when a canary was last seen there.

CREATE TABLE pipeline_stages (
    component   text        NOT NULL,
    instance    uuid        NOT NULL,
    process     text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    beat_at     timestamptz NOT NULL DEFAULT now(),
    detail      jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (component, instance)
);

CREATE TABLE pipeline_canary_sent (
    id       smallint    PRIMARY KEY CHECK (id = 1),
    seq      bigint      NOT NULL DEFAULT 0,
    sent_at  timestamptz NOT NULL DEFAULT '-infinity'
);

INSERT INTO pipeline_canary_sent (id) VALUES (1);

CREATE TABLE pipeline_canary_seen (
    sink     text        PRIMARY KEY CHECK (sink IN ('kafka', 'redis')),
    seq      bigint      NOT NULL,
    sent_at  timestamptz NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
