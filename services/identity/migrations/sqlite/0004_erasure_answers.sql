-- Which consumer of identity's log has received which erasure, and what it answered it
-- deleted (JSON {"rows": n, ...}), for the erasure's receipt. A consumer without a row
-- has not received it yet: the receipt shows it pending.
CREATE TABLE erasure_answers (
    workspace_id TEXT NOT NULL,
    profile_id   BLOB NOT NULL,
    consumer     TEXT NOT NULL,
    store        TEXT NOT NULL,
    removed      TEXT NOT NULL,
    PRIMARY KEY (workspace_id, profile_id, consumer)
);
