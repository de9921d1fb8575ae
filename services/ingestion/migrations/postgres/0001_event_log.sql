-- The event log. Positions are (tx_id, seq): seq alone is taken at insert time, so
-- concurrent transactions can commit out of seq order; readers only take rows whose
-- transaction is older than every transaction still running (the snapshot's xmin), so
-- a late commit can never land behind a cursor that has already moved past it.
CREATE TABLE events (
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    tx_id        bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    workspace_id text NOT NULL,
    message_id   text NOT NULL,
    event_id     uuid NOT NULL,
    event_type   smallint NOT NULL,
    received_at  timestamptz NOT NULL,
    -- corvus.common.v1.Event, protobuf-encoded, skew-corrected.
    payload      bytea NOT NULL,
    traceparent  text,
    PRIMARY KEY (tx_id, seq)
);

-- Idempotency: one row per (workspace, message_id), across replicas and restarts.
CREATE UNIQUE INDEX events_message ON events (workspace_id, message_id);
CREATE INDEX events_workspace ON events (workspace_id, seq);

-- Wakes the dispatchers of every replica when a batch commits.
CREATE FUNCTION notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('corvus_ingestion_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_events();

-- One cursor per consumer: the position of the last event handed on.
CREATE TABLE consumers (
    name             text PRIMARY KEY,
    tx_id            bigint NOT NULL DEFAULT 0,
    seq              bigint NOT NULL DEFAULT 0,
    last_delivery_at timestamptz,
    last_error       text
);

CREATE TABLE dead_letters (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer         text NOT NULL,
    workspace_id     text NOT NULL,
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
