-- Alert rules, by name per workspace: the rule as JSON (kind, thresholds, events,
-- cooldown, webhook).
CREATE TABLE alert_rules (
    workspace_id text NOT NULL,
    name         text NOT NULL,
    definition   text NOT NULL,
    created_at   integer NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

-- Per workspace: a counter of changes to its alert rules (a replica's cache of them is
-- current while it matches), and the sequence of its latest alert. Raising an alert
-- takes this row, so alerts commit in the order of their sequence.
CREATE TABLE alert_counters (
    workspace_id text PRIMARY KEY,
    rules        integer NOT NULL DEFAULT 0,
    alerts       integer NOT NULL DEFAULT 0
);

-- Alerts raised, by sequence per workspace.
CREATE TABLE alerts (
    workspace_id     text NOT NULL,
    sequence         integer NOT NULL,
    alert_id         blob NOT NULL,
    rule             text NOT NULL,
    kind             text NOT NULL,
    profile_id       blob NOT NULL,
    event_id         text NOT NULL,
    reason           text NOT NULL,
    raised_at        integer NOT NULL,
    -- open, acknowledged or assigned.
    state            text NOT NULL,
    assignee         text NOT NULL DEFAULT '',
    note             text NOT NULL DEFAULT '',
    updated_at       integer NOT NULL,
    -- Who it is about, JSON; the segment and region again, to filter by.
    summary          text NOT NULL,
    segment          text NOT NULL DEFAULT '',
    region           text NOT NULL DEFAULT '',
    -- none (the rule has no webhook), pending, delivered or failed.
    webhook_state    text NOT NULL,
    webhook_attempts integer NOT NULL DEFAULT 0,
    webhook_error    text NOT NULL DEFAULT '',
    -- When a pending webhook is next due; an attempt under way holds it further off.
    webhook_next_at  integer,
    PRIMARY KEY (workspace_id, sequence)
);
CREATE UNIQUE INDEX alerts_by_id ON alerts (workspace_id, alert_id);
CREATE INDEX alerts_of_person ON alerts (workspace_id, profile_id);
CREATE INDEX alerts_due ON alerts (webhook_next_at) WHERE webhook_state = 'pending';

-- When each rule's cooldown ends for each person: an alert is raised only by the
-- statement that moves it, so one cause raises one alert across replicas.
CREATE TABLE cooldowns (
    workspace_id text NOT NULL,
    rule         text NOT NULL,
    profile_id   blob NOT NULL,
    until_at     integer NOT NULL,
    PRIMARY KEY (workspace_id, rule, profile_id)
);
CREATE INDEX cooldowns_of_person ON cooldowns (workspace_id, profile_id);

-- Each person's churn risk as churn-risk rules last looked at it, and when.
CREATE TABLE churn_seen (
    workspace_id text NOT NULL,
    profile_id   blob NOT NULL,
    churn_risk   real,
    looked_at    integer NOT NULL,
    PRIMARY KEY (workspace_id, profile_id)
);
