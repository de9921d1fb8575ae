-- Metrics: each definition (JSON), fixed once created.
CREATE TABLE metrics (
    workspace_id text NOT NULL,
    name         text NOT NULL,
    definition   text NOT NULL,
    created_at   integer NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

-- Every decision of orchestration's log, once each: a person's first decision of a
-- campaign is their exposure, and the count is how often they were touched.
CREATE TABLE decisions (
    workspace_id text NOT NULL,
    decision_id  blob NOT NULL,
    -- The person now (merges move it), and the one it was made for (an unmerge moves it
    -- back).
    profile_id   blob NOT NULL,
    decided_for  blob NOT NULL,
    experiment   text NOT NULL,
    arm          text NOT NULL,
    action       text NOT NULL,
    channel      text NOT NULL,
    segment      text NOT NULL,
    policy       text NOT NULL,
    propensity   real NOT NULL,
    decided_at   integer NOT NULL,
    PRIMARY KEY (decision_id)
);
-- A person's rows are read many people at a time (`profile_id IN (…)`, the workspace
-- checked on each row). The ids are unique across workspaces (UUIDs minted by
-- orchestration, ingestion and identity), so no index of these four tables holds the
-- workspace: a planner that would rather scan a whole index for the workspace than
-- descend it once per person has no such index to scan.
CREATE INDEX decisions_profile ON decisions (profile_id);

-- The events a metric counts, once per event and metric, whether or not the person
-- was exposed yet: an exposure that arrives later, a merge or an unmerge recomputes
-- the person's values from them.
CREATE TABLE outcomes (
    workspace_id text NOT NULL,
    event_id     blob NOT NULL,
    metric       text NOT NULL,
    profile_id   blob NOT NULL,
    at           integer NOT NULL,
    numerator    real NOT NULL,
    denominator  real NOT NULL,
    PRIMARY KEY (event_id, metric)
);
CREATE INDEX outcomes_profile ON outcomes (profile_id);

-- The funnel's stages decisions reached (0 sent, 1 delivered, 2 opened, 3 clicked), from
-- events carrying the decision's id, once per decision and stage.
CREATE TABLE stages (
    -- Derived from the workspace and the decision id (UUIDv5): an event of another
    -- workspace naming the same id keys a row of its own.
    stage_key    blob NOT NULL,
    decision_id  blob NOT NULL,
    stage        integer NOT NULL,
    workspace_id text NOT NULL,
    profile_id   blob NOT NULL,
    at           integer NOT NULL,
    PRIMARY KEY (stage_key, stage)
);
CREATE INDEX stages_profile ON stages (profile_id);

-- Derived from decisions: each person's exposure to each experiment (their first
-- decision's arm, channel, segment, action, UTC day and propensity), their touches
-- (decisions that sent) and the stages reached (bits), kept so a change knows what to
-- undo.
CREATE TABLE exposures (
    workspace_id text NOT NULL,
    profile_id   blob NOT NULL,
    experiment   text NOT NULL,
    arm          text NOT NULL,
    channel      text NOT NULL,
    segment      text NOT NULL,
    action       text NOT NULL,
    day          integer NOT NULL,
    exposed_at   integer NOT NULL,
    touches      integer NOT NULL,
    reached      integer NOT NULL,
    -- The first decision's propensity, for off-policy estimates.
    propensity   real NOT NULL,
    PRIMARY KEY (profile_id, experiment)
);
-- An experiment's exposures, for off-policy estimates and exports.
CREATE INDEX exposures_experiment ON exposures (experiment);

-- Derived from outcomes and exposures: each exposed person's value of each metric,
-- where any part is not zero.
CREATE TABLE units (
    workspace_id text NOT NULL,
    profile_id   blob NOT NULL,
    experiment   text NOT NULL,
    metric       text NOT NULL,
    value        real NOT NULL,
    denominator  real NOT NULL,
    covariate    real NOT NULL,
    PRIMARY KEY (profile_id, experiment, metric)
);

-- The aggregates results are computed from: per bucket (experiment, arm, channel,
-- segment, action, day of first exposure) the people, their touches, and the people
-- who reached each stage of the funnel…
CREATE TABLE exposure_counts (
    workspace_id text NOT NULL,
    experiment   text NOT NULL,
    arm          text NOT NULL,
    channel      text NOT NULL,
    segment      text NOT NULL,
    action       text NOT NULL,
    day          integer NOT NULL,
    users        integer NOT NULL,
    touches      integer NOT NULL,
    sent         integer NOT NULL,
    delivered    integer NOT NULL,
    opened       integer NOT NULL,
    clicked      integer NOT NULL,
    PRIMARY KEY (workspace_id, experiment, arm, channel, segment, action, day)
);

-- …and each metric's sums over the bucket's people.
CREATE TABLE sums (
    workspace_id     text NOT NULL,
    experiment       text NOT NULL,
    metric           text NOT NULL,
    arm              text NOT NULL,
    channel          text NOT NULL,
    segment          text NOT NULL,
    action           text NOT NULL,
    day              integer NOT NULL,
    sum              real NOT NULL,
    sum_squares      real NOT NULL,
    den_sum          real NOT NULL,
    den_sum_squares  real NOT NULL,
    sum_products     real NOT NULL,
    cov_sum          real NOT NULL,
    cov_sum_squares  real NOT NULL,
    cov_sum_products real NOT NULL,
    PRIMARY KEY (workspace_id, experiment, metric, arm, channel, segment, action, day)
);

-- The fatigue curve: people by the touches they had (at most 20)…
CREATE TABLE fatigue_counts (
    workspace_id text NOT NULL,
    experiment   text NOT NULL,
    touches      integer NOT NULL,
    users        integer NOT NULL,
    PRIMARY KEY (workspace_id, experiment, touches)
);

-- …and each metric's value and its square over them.
CREATE TABLE fatigue_sums (
    workspace_id text NOT NULL,
    experiment   text NOT NULL,
    metric       text NOT NULL,
    touches      integer NOT NULL,
    sum          real NOT NULL,
    sum_squares  real NOT NULL,
    PRIMARY KEY (workspace_id, experiment, metric, touches)
);

-- Each experiment's arms: the share the campaign's design gives the arm (its latest
-- decision's), and the first and latest decision.
CREATE TABLE arms (
    workspace_id text NOT NULL,
    experiment   text NOT NULL,
    arm          text NOT NULL,
    share        real NOT NULL,
    first_at     integer NOT NULL,
    last_at      integer NOT NULL,
    PRIMARY KEY (workspace_id, experiment, arm)
);
