-- Triggered campaigns waiting to be decided: at due_at, unless an event named `unless`
-- by the person came first (a wait-and-check), or, for a score trigger, a look at the
-- person's score. A replica takes rows by setting lease_until.
CREATE TABLE triggers (
    id           blob PRIMARY KEY,
    workspace_id text NOT NULL,
    campaign     text NOT NULL,
    profile_id   blob NOT NULL,
    -- event or score
    kind         text NOT NULL,
    due_at       integer NOT NULL,
    unless       text NOT NULL DEFAULT '',
    cause        text NOT NULL,
    lease_until  integer
);
CREATE INDEX triggers_due ON triggers (due_at);
CREATE INDEX triggers_of_person ON triggers (workspace_id, profile_id);
-- One look at a person's score per campaign waits at a time.
CREATE UNIQUE INDEX triggers_one_score_look ON triggers (workspace_id, campaign, profile_id) WHERE kind = 'score';

-- The score each person had when last looked at, per score-triggered campaign: a
-- trigger fires when it crosses the threshold upwards.
CREATE TABLE trigger_scores (
    workspace_id text NOT NULL,
    campaign     text NOT NULL,
    profile_id   blob NOT NULL,
    value        real NOT NULL,
    PRIMARY KEY (workspace_id, campaign, profile_id)
);
