-- How far the triggers that follow something outside a person's events have got: per
-- workspace and key, "audience:<name>" the last change of scoring's audience taken,
-- "schedule:<campaign>" the last local date (days since 1970-01-01) run. Moving a
-- cursor and queueing what it passed are one transaction that expects the cursor where
-- it was read, so of two replicas following the same thing one queues each change.
CREATE TABLE trigger_cursors (
    workspace_id text NOT NULL,
    key          text NOT NULL,
    position     bigint NOT NULL,
    PRIMARY KEY (workspace_id, key)
);
