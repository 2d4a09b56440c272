-- The web dashboard (src/ui): sessions opened at /ui/login, and the relay's row counter that
-- its rates come from.

-- How many outbox rows each sink's cursor has passed on each partition: added to in the same
-- statement that moves the cursor, so the dashboard reads rates without counting the outbox.
ALTER TABLE relay_progress ADD COLUMN passed bigint NOT NULL DEFAULT 0;

-- One row per open UI session. The cookie holds a random id; only its SHA-256 is stored, so a
-- copy of this table opens no session. A key session re-checks its key on every request
-- (revoking the key ends the session); a token session keeps the token's roles until the
-- token's expiry.
CREATE TABLE ui_sessions (
    id_hash    bytea       PRIMARY KEY,
    principal  text        NOT NULL,
    method     text        NOT NULL CHECK (method IN ('api_key', 'token', 'open')),
    key_id     text,
    roles      text[]      NOT NULL DEFAULT '{}',
    csrf       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);

-- The log's correlation filter (`GET /v1/events?correlation_id=`, the dashboard's Events page)
-- and an event's "what it caused" (events whose causation_id is its id), without scanning the
-- store. Partial: events without the key take no room in them.
CREATE INDEX events_correlation ON events ((metadata->>'correlation_id'), position)
    WHERE metadata ? 'correlation_id';
CREATE INDEX events_causation ON events ((metadata->>'causation_id'))
    WHERE metadata ? 'causation_id';
