-- Which consumer of identity's log has received which erasure, and what it answered it
-- deleted (JSON {"rows": n, ...}), for the erasure's receipt. A consumer without a row
-- has not received it yet: the receipt shows it pending.
CREATE TABLE erasure_answers (
    workspace_id text COLLATE "C" NOT NULL,
    profile_id   uuid NOT NULL,
    consumer     text COLLATE "C" NOT NULL,
    store        text NOT NULL,
    removed      text NOT NULL,
    PRIMARY KEY (workspace_id, profile_id, consumer)
);
