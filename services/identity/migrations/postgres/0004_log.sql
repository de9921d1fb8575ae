-- Identity's log: resolved events (with their profile) and profile changes, in the
-- order identity committed them, handed on to the services after identity with a cursor
-- each. The same shape as ingestion's event log, read by the same code (corvus-log).
-- Unlike ingestion's events, these entries depend on each other (a merge moves events
-- resolved before it), so their order must be commit order, which a transaction id does
-- not give: a transaction that began first can commit last. So every writer takes one
-- advisory lock just before it inserts its entries and holds it to its commit; seq is
-- then commit order, and tx_id stays 0 (always below the horizon the reader checks).
-- message_id is the entry's key: the event id of a resolved event, the change id of a
-- change. event_type is the event's type, or below 0 for a change (-1 merged,
-- -2 unmerged, -3 erased). payload is a corvus.identity.v1.LogEntry.
CREATE TABLE events (
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    tx_id        bigint NOT NULL DEFAULT 0,
    workspace_id text COLLATE "C" NOT NULL,
    message_id   text COLLATE "C" NOT NULL,
    event_id     uuid NOT NULL,
    event_type   smallint NOT NULL,
    received_at  timestamptz NOT NULL,
    payload      bytea NOT NULL,
    traceparent  text,
    PRIMARY KEY (tx_id, seq)
);

-- An entry is found by its event id (or change id) when a person is erased.
CREATE UNIQUE INDEX events_entry ON events (workspace_id, event_id);
CREATE INDEX events_workspace ON events (workspace_id, seq);

CREATE FUNCTION notify_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('corvus_identity_log', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_log();

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
