-- Principals and their API keys (see src/auth). A key's secret is never stored, nor a plain hash
-- of it: `hmac` is HMAC-SHA256 under the server's secret (auth.key_secret) over the key id and the
-- secret, so a copy of this table alone does not let anyone check a guessed key.
CREATE TABLE principals (
    id          uuid        PRIMARY KEY,
    -- Lowercase ASCII letters, digits and . _ @ -, starting with a letter or digit, 1 to 64 long.
    name        text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._@-]{0,63}$'),
    kind        text        NOT NULL CHECK (kind IN ('service', 'human', 'admin')),
    -- Built-in role names (producer, reader, registry-admin, operator, admin), checked by keel,
    -- so that a role added later needs no migration.
    roles       text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE api_keys (
    -- 16 lowercase hex characters: the public half of `keel_<key id>_<secret>`.
    key_id       text        PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    principal_id uuid        NOT NULL REFERENCES principals (id),
    hmac         bytea       NOT NULL CHECK (octet_length(hmac) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);

CREATE INDEX api_keys_principal ON api_keys (principal_id);
