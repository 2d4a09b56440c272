-- Aggregate snapshots for keel::replay::load_snapshotted: a folded state and the version it
-- reflects. `kind` names the state's shape; a snapshot of another kind is ignored, so changing a
-- state type only needs a new kind.
CREATE TABLE aggregate_snapshots (
    aggregate_type text        NOT NULL,
    aggregate_id   uuid        NOT NULL,
    kind           text        NOT NULL,
    version        integer     NOT NULL CHECK (version > 0),
    state          jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, kind)
);
