-- Custom grants per principal (see src/auth/grant.rs), on top of its built-in roles. Patterns are
-- a name, a prefix ending in '*', or '*'; keel checks them before storing.
CREATE TABLE grants (
    id           bigserial   PRIMARY KEY,
    principal_id uuid        NOT NULL REFERENCES principals (id),
    effect       text        NOT NULL CHECK (effect IN ('allow', 'deny')),
    action       text        NOT NULL,
    resource     text        NOT NULL,
    event_type   text        NOT NULL DEFAULT '*',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (principal_id, effect, action, resource, event_type)
);

-- Who did what (src/auth/audit.rs). Ids are gap-free (assigned under an advisory lock) and each
-- row's hash chains it to the one before, so `keel audit verify` finds an edited or removed row.
CREATE TABLE audit_log (
    id          bigint      PRIMARY KEY,
    at          timestamptz NOT NULL,
    principal   text        NOT NULL,
    auth_method text        NOT NULL,
    action      text        NOT NULL,
    target      jsonb       NOT NULL,
    params      jsonb       NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed', 'started')),
    reason      text,
    request_id  text,
    trace_id    text,
    prev_hash   bytea       NOT NULL,
    hash        bytea       NOT NULL
);

CREATE INDEX audit_log_principal ON audit_log (principal, id);

-- Append-only for everyone the trigger binds (every role but a superuser, who can disable it;
-- the hash chain is for that case). Where keel runs as its own role, also REVOKE UPDATE, DELETE,
-- TRUNCATE ON audit_log FROM that role.
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
