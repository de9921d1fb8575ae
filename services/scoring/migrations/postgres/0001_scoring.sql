-- What scoring keeps of each resolved event (the fact, JSON), under the profile it
-- belongs to now: merges, unmerges and erasures move or delete these rows.
CREATE TABLE facts (
    workspace_id text NOT NULL,
    event_id     uuid NOT NULL,
    profile_id   uuid NOT NULL,
    -- The event's time, microseconds since the epoch.
    at           bigint NOT NULL,
    -- Set for a purchase.
    revenue      double precision,
    fact         text NOT NULL,
    PRIMARY KEY (workspace_id, event_id)
);
CREATE INDEX facts_of_profile ON facts (workspace_id, profile_id, at);
CREATE INDEX purchases ON facts (workspace_id, at) WHERE revenue IS NOT NULL;

-- Profiles merged into another: a read of a merged id answers with its survivor.
CREATE TABLE aliases (
    workspace_id text NOT NULL,
    profile_id   uuid NOT NULL,
    survivor_id  uuid NOT NULL,
    PRIMARY KEY (workspace_id, profile_id)
);
CREATE INDEX aliases_of_survivor ON aliases (workspace_id, survivor_id);

-- Each workspace's current model of a kind (JSON).
CREATE TABLE models (
    workspace_id text NOT NULL,
    kind         text NOT NULL,
    model        text NOT NULL,
    fitted_at    bigint NOT NULL,
    PRIMARY KEY (workspace_id, kind)
);
