-- Keys with role 'service' carry deliveries between Corvus's own services (a log's
-- dispatcher calling a consumer's Deliver): across workspaces, and nothing else.
-- SQLite cannot change a CHECK constraint in place: the table is built anew.
CREATE TABLE api_keys_new (
    key_hash     BLOB PRIMARY KEY,
    key_prefix   TEXT NOT NULL UNIQUE,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    role         TEXT NOT NULL CHECK (role IN ('ingest', 'read', 'admin', 'service')),
    name         TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at   TEXT
);
INSERT INTO api_keys_new SELECT key_hash, key_prefix, workspace_id, role, name, created_at, revoked_at FROM api_keys;
DROP TABLE api_keys;
ALTER TABLE api_keys_new RENAME TO api_keys;
CREATE INDEX api_keys_workspace ON api_keys (workspace_id);
