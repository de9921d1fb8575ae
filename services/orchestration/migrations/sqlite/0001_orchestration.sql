-- Campaigns: the current version and state of each, by name per workspace.
CREATE TABLE campaigns (
    workspace_id text NOT NULL,
    name         text NOT NULL,
    version      integer NOT NULL,
    state        text NOT NULL,
    created_at   integer NOT NULL,
    updated_at   integer NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

-- Every version's definition (JSON), so that a decision names the one it used.
CREATE TABLE campaign_versions (
    workspace_id text NOT NULL,
    name         text NOT NULL,
    version      integer NOT NULL,
    definition   text NOT NULL,
    created_at   integer NOT NULL,
    PRIMARY KEY (workspace_id, name, version)
);

-- Per workspace: a counter of campaign changes (a replica's cache of live campaigns is
-- current while it matches) and the share of people in the control group.
CREATE TABLE workspaces (
    workspace_id  text PRIMARY KEY,
    campaigns     integer NOT NULL DEFAULT 0,
    control_share real NOT NULL DEFAULT 0
);

-- One row per person decided for: its lock serialises a person's decisions across
-- replicas, so that caps are counted with every earlier decision's touch.
CREATE TABLE people (
    workspace_id text NOT NULL,
    profile_id   blob NOT NULL,
    decisions    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, profile_id)
);

-- What caps count: each send, with its time and its local day (days since 1970-01-01
-- in the person's zone).
CREATE TABLE touches (
    workspace_id text NOT NULL,
    profile_id   blob NOT NULL,
    campaign     text NOT NULL,
    channel      text NOT NULL,
    at           integer NOT NULL,
    local_day    integer NOT NULL,
    decision_id  blob NOT NULL
);
CREATE INDEX touches_of_person ON touches (workspace_id, profile_id, at);

-- Sends spent of each campaign with a budget.
CREATE TABLE budgets (
    workspace_id text NOT NULL,
    campaign     text NOT NULL,
    spent        integer NOT NULL,
    PRIMARY KEY (workspace_id, campaign)
);

-- The decision log.
CREATE TABLE decisions (
    decision_id      blob PRIMARY KEY,
    workspace_id     text NOT NULL,
    profile_id       blob NOT NULL,
    campaign         text NOT NULL,
    campaign_version integer NOT NULL,
    arm              text NOT NULL,
    action           text NOT NULL,
    channel          text NOT NULL,
    segment          text NOT NULL,
    send_at          integer NOT NULL,
    decided_at       integer NOT NULL,
    -- The rest of it (products, content, policy, propensity, explanation), JSON.
    detail           text NOT NULL,
    outcome_event    text,
    outcome_at       integer
);
CREATE INDEX decisions_of_workspace ON decisions (workspace_id, decision_id);
CREATE INDEX decisions_of_person ON decisions (workspace_id, profile_id, decided_at);

-- The policy's evidence per cell: decisions that sent, and those with an outcome.
CREATE TABLE outcomes (
    workspace_id text NOT NULL,
    campaign     text NOT NULL,
    segment      text NOT NULL,
    action       text NOT NULL,
    channel      text NOT NULL,
    trials       integer NOT NULL DEFAULT 0,
    successes    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, campaign, segment, action, channel)
);

-- Profiles merged into another: outcomes of the survivor find decisions made for them.
CREATE TABLE aliases (
    workspace_id text NOT NULL,
    profile_id   blob NOT NULL,
    survivor_id  blob NOT NULL,
    PRIMARY KEY (workspace_id, profile_id)
);
CREATE INDEX aliases_of_survivor ON aliases (workspace_id, survivor_id);
