-- Identity's log: resolved events (with their profile) and profile changes, in commit
-- order, handed on to the services after identity with a cursor each. The same shape
-- as ingestion's event log, read by the same code (corvus-log). message_id is the
-- entry's key (event id or change id); event_type is below 0 for a change (-1 merged,
-- -2 unmerged, -3 erased); payload is a corvus.identity.v1.LogEntry.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id        INTEGER NOT NULL DEFAULT 0,
    workspace_id TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    event_id     BLOB NOT NULL,
    event_type   INTEGER NOT NULL,
    received_at  TEXT NOT NULL,
    payload      BLOB NOT NULL,
    traceparent  TEXT
);

-- An entry is found by its event id (or change id) when a person is erased.
CREATE UNIQUE INDEX events_entry ON events (workspace_id, event_id);
CREATE INDEX events_workspace ON events (workspace_id, seq);

CREATE TABLE consumers (
    name             TEXT PRIMARY KEY,
    tx_id            INTEGER NOT NULL DEFAULT 0,
    seq              INTEGER NOT NULL DEFAULT 0,
    last_delivery_at TEXT,
    last_error       TEXT
);

CREATE TABLE dead_letters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer         TEXT NOT NULL,
    workspace_id     TEXT NOT NULL,
    tx_id            INTEGER NOT NULL,
    seq              INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    failed_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    replay_requested INTEGER NOT NULL DEFAULT 0,
    UNIQUE (consumer, tx_id, seq)
);

CREATE INDEX dead_letters_workspace ON dead_letters (workspace_id, consumer, id);
