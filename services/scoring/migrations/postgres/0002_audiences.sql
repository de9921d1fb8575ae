-- The event's own payload (type, name, properties, traits; JSON), for computed traits
-- and audiences. Absent for events held before it was kept.
ALTER TABLE facts ADD COLUMN event text;

-- Users' computed traits and audiences: definitions (JSON), named per workspace.
CREATE TABLE computed_traits (
    workspace_id text NOT NULL,
    name         text NOT NULL,
    definition   text NOT NULL,
    created_at   bigint NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

CREATE TABLE audiences (
    workspace_id text NOT NULL,
    name         text NOT NULL,
    definition   text NOT NULL,
    created_at   bigint NOT NULL,
    -- When every profile held at creation had been evaluated; null while building.
    built_at     bigint,
    PRIMARY KEY (workspace_id, name)
);

-- Each profile's standing in each audience: a member, or one whose standing will
-- change with time (recheck_at: when, with no new event, it must be looked at again).
-- A non-member with nothing due has no row.
CREATE TABLE audience_members (
    workspace_id text NOT NULL,
    audience     text NOT NULL,
    profile_id   uuid NOT NULL,
    member       boolean NOT NULL,
    since        bigint NOT NULL,
    recheck_at   bigint,
    PRIMARY KEY (workspace_id, audience, profile_id)
);
CREATE INDEX audience_members_due ON audience_members (recheck_at) WHERE recheck_at IS NOT NULL;
CREATE INDEX audience_members_of_profile ON audience_members (workspace_id, profile_id);

-- Entries and exits in the order they happened, for StreamAudienceChanges.
CREATE TABLE audience_changes (
    seq          bigserial PRIMARY KEY,
    workspace_id text NOT NULL,
    audience     text NOT NULL,
    profile_id   uuid NOT NULL,
    entered      boolean NOT NULL,
    at           bigint NOT NULL,
    reason       text NOT NULL
);
CREATE INDEX audience_changes_of_audience ON audience_changes (workspace_id, audience, seq);
CREATE INDEX audience_changes_of_profile ON audience_changes (workspace_id, profile_id);
