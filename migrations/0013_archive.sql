-- The event archive and retention (see src/archive/, src/retention/ and docs/guarantees.md).
--
--   * The archiver walks each event type in the log's gap-safe (tx_id, position) order, below the
--     transaction horizon, and writes contiguous runs of it as Avro files ("segments") to object
--     storage. archive_progress is where each type's walk has got to: every event of the type at or
--     below that cursor is in exactly one segment.
--   * archive_segments is the catalog of those files: the cursor range, counts, the sha256 of the
--     uploaded bytes, a digest of the records that does not depend on the codec, and a hash chain
--     per type (each manifest names the previous one's sha256). state moves
--     written -> verified -> purged; a purged segment's events may be gone from `events`.
--   * retention_horizons says, per type, how far purging has reached: below `(tx_id, position)`
--     some of the type's events may be missing from `events` and live only in the archive. A
--     reader that starts below it either reads through the archive or is refused (HTTP 410);
--     it never sees a gap as the end.
--   * streams.truncated_before is the first version of an aggregate still in `events` (1 when none
--     was purged). streams.version survives purging, so optimistic concurrency still holds.

CREATE TABLE archive_progress (
    event_type text        PRIMARY KEY,
    tx_id      bigint      NOT NULL DEFAULT 0,
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE archive_segments (
    segment_id           uuid        PRIMARY KEY,
    event_type           text        NOT NULL,
    -- 1, 2, 3... per type, in cursor order; the object key carries it zero-padded.
    seq                  bigint      NOT NULL,
    schema_id            integer,
    lo_tx_id             bigint      NOT NULL,
    lo_position          bigint      NOT NULL,
    hi_tx_id             bigint      NOT NULL,
    hi_position          bigint      NOT NULL,
    position_min         bigint      NOT NULL,
    position_max         bigint      NOT NULL,
    created_min          timestamptz NOT NULL,
    created_max          timestamptz NOT NULL,
    record_count         integer     NOT NULL CHECK (record_count > 0),
    codec                text        NOT NULL,
    object_key           text        NOT NULL UNIQUE,
    byte_size            bigint      NOT NULL,
    file_sha256          text        NOT NULL,
    content_digest       text        NOT NULL,
    manifest_sha256      text        NOT NULL,
    prev_manifest_sha256 text,
    keel_version         text        NOT NULL,
    state                text        NOT NULL DEFAULT 'written'
        CHECK (state IN ('written', 'verified', 'purged')),
    written_at           timestamptz NOT NULL DEFAULT now(),
    -- The last `keel archive verify --against-db` (or purge-time check) that passed.
    verified_at          timestamptz,
    purged_at            timestamptz,
    UNIQUE (event_type, seq)
);

CREATE INDEX archive_segments_range ON archive_segments (event_type, hi_tx_id, hi_position);

CREATE TABLE retention_horizons (
    event_type    text        PRIMARY KEY,
    tx_id         bigint      NOT NULL,
    position      bigint      NOT NULL,
    purged_events bigint      NOT NULL DEFAULT 0,
    purged_at     timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE streams ADD COLUMN truncated_before integer NOT NULL DEFAULT 1;
