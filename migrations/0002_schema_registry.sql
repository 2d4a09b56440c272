-- The schema registry, in the Confluent Schema Registry's model: schemas with global ids,
-- subjects with versions (soft-deletable), and compatibility modes per subject.

CREATE TABLE registry_schemas (
    id             serial      PRIMARY KEY,
    schema_type    text        NOT NULL DEFAULT 'AVRO',
    -- The schema as registered, normalised (key order, whitespace); two registrations are the
    -- same schema when these are equal. Unlike the canonical form it keeps defaults and aliases.
    schema_text    text        NOT NULL,
    schema_md5     text        GENERATED ALWAYS AS (md5(schema_text)) STORED UNIQUE,
    -- Avro's Parsing Canonical Form and its CRC-64-AVRO (Rabin) fingerprint.
    canonical_form text        NOT NULL,
    fingerprint    bigint      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX registry_schemas_fingerprint ON registry_schemas (fingerprint);

CREATE TABLE registry_versions (
    subject    text        NOT NULL,
    version    integer     NOT NULL CHECK (version > 0),
    schema_id  integer     NOT NULL REFERENCES registry_schemas (id),
    deleted    boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);

CREATE INDEX registry_versions_schema ON registry_versions (schema_id);

-- Compatibility modes. The row with subject '' is the global default.
CREATE TABLE registry_config (
    subject       text PRIMARY KEY,
    compatibility text NOT NULL
);

INSERT INTO registry_config (subject, compatibility) VALUES ('', 'BACKWARD_TRANSITIVE');
