CREATE TABLE workspaces (
    id                text PRIMARY KEY,
    name              text NOT NULL,
    -- Ingest quota across all replicas; NULL means no limit.
    events_per_second integer CHECK (events_per_second > 0),
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    -- SHA-256 of the key: keys are 256-bit random, so a fast hash is enough.
    key_hash     bytea PRIMARY KEY,
    -- The first characters of the key, to name it in listings and revocations.
    key_prefix   text NOT NULL UNIQUE,
    workspace_id text NOT NULL REFERENCES workspaces (id),
    role         text NOT NULL CHECK (role IN ('ingest', 'read', 'admin')),
    name         text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE INDEX api_keys_workspace ON api_keys (workspace_id);
