-- SQLite has one writer at a time, so seq order is commit order and seq alone is the
-- position; tx_id is kept (always 0) so that both backends share one position type.
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

CREATE UNIQUE INDEX events_message ON events (workspace_id, message_id);
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
