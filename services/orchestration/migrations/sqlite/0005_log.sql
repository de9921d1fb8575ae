-- Orchestration's log: every decision, in commit order, handed on to measurement (and
-- any consumer configured) with a cursor each. The same shape as ingestion's event log,
-- read by the same code (corvus-log). message_id and event_id are the decision id;
-- event_type is 0; payload is a corvus.orchestration.v1.DecisionLogEntry.
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

CREATE TABLE stream_batches (
    first_tx  integer NOT NULL,
    first_seq integer NOT NULL,
    last_tx   integer NOT NULL,
    last_seq  integer NOT NULL,
    entries   blob NOT NULL,
    PRIMARY KEY (last_tx, last_seq)
);

CREATE TABLE stream_erasures (
    tx_id integer NOT NULL,
    seq   integer NOT NULL,
    PRIMARY KEY (tx_id, seq)
);

-- Whether a sent decision was counted as a trial of its cell (`outcomes`): the policy's
-- own consumer of the log counts each once, however often it is delivered.
ALTER TABLE decisions ADD COLUMN counted INTEGER NOT NULL DEFAULT 0;
