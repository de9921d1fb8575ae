-- What feedback is counted by, per person: their region (from their traits' `region`
-- or `country`) and segment (their latest decision's).
CREATE TABLE people (
    profile_id   uuid PRIMARY KEY,
    workspace_id text NOT NULL,
    region       text NOT NULL,
    segment      text NOT NULL,
    segment_at   bigint NOT NULL
);

-- Each piece of feedback once per event and kind: an NPS answer (0 to 10), a CSAT
-- answer (1 to 5), or a mention's sentiment (-1 to 1), with what it is counted by.
CREATE TABLE feedback (
    event_id     uuid NOT NULL,
    kind         text NOT NULL,
    workspace_id text NOT NULL,
    profile_id   uuid NOT NULL,
    day          integer NOT NULL,
    channel      text NOT NULL,
    region       text NOT NULL,
    segment      text NOT NULL,
    activation   text NOT NULL,
    value        double precision NOT NULL,
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
    responses    bigint NOT NULL,
    sum          double precision NOT NULL,
    sum_squares  double precision NOT NULL,
    top          bigint NOT NULL,
    bottom       bigint NOT NULL,
    PRIMARY KEY (workspace_id, kind, day, channel, region, segment, activation)
);

-- Profiles erased: what either log brings of them afterwards (a decision orchestration
-- handed on before it erased its own log, an event identity resolved before the
-- erasure) is dropped, not kept again.
CREATE TABLE erased (
    profile_id   uuid PRIMARY KEY,
    workspace_id text NOT NULL,
    erased_at    bigint NOT NULL
);
