-- Orchestration's log: every decision, in commit order, handed on to measurement (and
-- any consumer configured) with a cursor each. The same shape as ingestion's event log,
-- read by the same code (corvus-log). Decisions do not depend on each other, so as in
-- ingestion's log a position is (tx_id, seq) and readers take only rows whose
-- transaction is older than every one still running. message_id and event_id are the
-- decision id; event_type is 0; payload is a corvus.orchestration.v1.DecisionLogEntry.
CREATE TABLE events (
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    tx_id        bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    workspace_id text COLLATE "C" NOT NULL,
    message_id   text COLLATE "C" NOT NULL,
    event_id     uuid NOT NULL,
    event_type   smallint NOT NULL,
    received_at  timestamptz NOT NULL,
    payload      bytea NOT NULL,
    traceparent  text,
    PRIMARY KEY (tx_id, seq)
);

CREATE UNIQUE INDEX events_message ON events (workspace_id, message_id);
CREATE INDEX events_workspace ON events (workspace_id, seq);

-- No NOTIFY on insert, unlike the other logs: a notifying commit takes a lock every
-- notifying commit of the database waits for, and decisions commit one at a time. The
-- replica that decides wakes its own dispatchers; the others' poll finds the rest.

CREATE TABLE consumers (
    name             text COLLATE "C" PRIMARY KEY,
    tx_id            bigint NOT NULL DEFAULT 0,
    seq              bigint NOT NULL DEFAULT 0,
    last_delivery_at timestamptz,
    last_error       text
);

CREATE TABLE dead_letters (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer         text NOT NULL,
    workspace_id     text COLLATE "C" NOT NULL,
    tx_id            bigint NOT NULL,
    seq              bigint NOT NULL,
    reason           text NOT NULL,
    attempts         integer NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now(),
    replay_requested boolean NOT NULL DEFAULT false,
    UNIQUE (consumer, tx_id, seq)
);

CREATE INDEX dead_letters_workspace ON dead_letters (workspace_id, consumer, id);
CREATE INDEX dead_letters_replay ON dead_letters (consumer) WHERE replay_requested;

-- For a relay of the log to a stream (the log's erasures queue positions for it).
CREATE TABLE stream_batches (
    first_tx  bigint NOT NULL,
    first_seq bigint NOT NULL,
    last_tx   bigint NOT NULL,
    last_seq  bigint NOT NULL,
    entries   bytea NOT NULL,
    PRIMARY KEY (last_tx, last_seq)
);

CREATE TABLE stream_erasures (
    tx_id bigint NOT NULL,
    seq   bigint NOT NULL,
    PRIMARY KEY (tx_id, seq)
);

-- Whether a sent decision was counted as a trial of its cell (`outcomes`): the policy's
-- own consumer of the log counts each once, however often it is delivered.
ALTER TABLE decisions ADD COLUMN counted boolean NOT NULL DEFAULT false;
