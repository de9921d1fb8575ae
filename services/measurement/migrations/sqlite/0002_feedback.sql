-- What feedback is counted by, per person: their region (from their traits' `region`
-- or `country`) and segment (their latest decision's).
CREATE TABLE people (
    profile_id   blob PRIMARY KEY,
    workspace_id text NOT NULL,
    region       text NOT NULL,
    segment      text NOT NULL,
    segment_at   integer NOT NULL
);

-- Each piece of feedback once per event and kind: an NPS answer (0 to 10), a CSAT
-- answer (1 to 5), or a mention's sentiment (-1 to 1), with what it is counted by.
CREATE TABLE feedback (
    event_id     blob NOT NULL,
    kind         text NOT NULL,
    workspace_id text NOT NULL,
    profile_id   blob NOT NULL,
    day          integer NOT NULL,
    channel      text NOT NULL,
    region       text NOT NULL,
    segment      text NOT NULL,
    activation   text NOT NULL,
    value        real NOT NULL,
    PRIMARY KEY (event_id, kind)
);
CREATE INDEX feedback_profile ON feedback (profile_id);

-- Per kind and key: the answers, their sum and sum of squares, and how many were at the
-- top (promoters, satisfied, positive) and at the bottom (detractors, dissatisfied,
-- negative).
CREATE TABLE feedback_counts (
    workspace_id text NOT NULL,
    kind         text NOT NULL,
    day          integer NOT NULL,
    channel      text NOT NULL,
    region       text NOT NULL,
    segment      text NOT NULL,
    activation   text NOT NULL,
    responses    integer NOT NULL,
    sum          real NOT NULL,
    sum_squares  real NOT NULL,
    top          integer NOT NULL,
    bottom       integer NOT NULL,
    PRIMARY KEY (workspace_id, kind, day, channel, region, segment, activation)
);

-- Profiles erased: what either log brings of them afterwards (a decision orchestration
-- handed on before it erased its own log, an event identity resolved before the
-- erasure) is dropped, not kept again.
CREATE TABLE erased (
    profile_id   blob PRIMARY KEY,
    workspace_id text NOT NULL,
    erased_at    integer NOT NULL
);
