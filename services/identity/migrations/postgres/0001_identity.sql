-- The identity graph and the profile store. Times are microseconds since the Unix epoch
-- (the embedded SQLite schema is the same), ids compare byte by byte (COLLATE "C").

-- One row per profile ever made. A merged profile keeps its row, pointing at the profile
-- it was merged into, so that its id redirects; an erased one keeps only its id.
CREATE TABLE profiles (
    workspace_id text COLLATE "C" NOT NULL,
    profile_id   uuid NOT NULL,
    created_at   bigint NOT NULL,
    updated_at   bigint NOT NULL,
    first_seen   bigint NOT NULL,
    last_seen    bigint NOT NULL,
    event_count  bigint NOT NULL DEFAULT 0,
    -- Grows with every change; the read model keeps the version it was built from.
    version      bigint NOT NULL DEFAULT 1,
    merged_into  uuid,
    erased_at    bigint,
    PRIMARY KEY (workspace_id, profile_id)
);
CREATE INDEX profiles_merged_into ON profiles (workspace_id, merged_into) WHERE merged_into IS NOT NULL;

-- Each identifier belongs to at most one profile: the primary key is what makes two
-- concurrent resolutions of one identifier meet.
CREATE TABLE identifiers (
    workspace_id text COLLATE "C" NOT NULL,
    kind         text COLLATE "C" NOT NULL,
    value        text COLLATE "C" NOT NULL,
    profile_id   uuid NOT NULL,
    first_seen   bigint NOT NULL,
    PRIMARY KEY (workspace_id, kind, value)
);
CREATE INDEX identifiers_profile ON identifiers (workspace_id, profile_id);

-- Every resolved event: where it went, what it carried (identifiers "kind\x1fvalue" joined
-- by "\x1e"; traits and consents as JSON), so an unmerge can place and replay it.
CREATE TABLE profile_events (
    workspace_id text COLLATE "C" NOT NULL,
    event_id     uuid NOT NULL,
    profile_id   uuid NOT NULL,
    at           bigint NOT NULL,
    event_type   smallint NOT NULL,
    channel      smallint NOT NULL,
    name         text NOT NULL,
    -- The event's idempotency key in ingestion's log, to erase it there.
    message_id   text NOT NULL,
    identifiers  text NOT NULL,
    traits       text,
    consents     text,
    PRIMARY KEY (workspace_id, event_id)
);
CREATE INDEX profile_events_profile ON profile_events (workspace_id, profile_id, at);

CREATE TABLE event_counts (
    workspace_id text COLLATE "C" NOT NULL,
    profile_id   uuid NOT NULL,
    channel      smallint NOT NULL,
    event_type   smallint NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (workspace_id, profile_id, channel, event_type)
);

-- The newest value of each trait (by the time of the event that set it).
CREATE TABLE traits (
    workspace_id text COLLATE "C" NOT NULL,
    profile_id   uuid NOT NULL,
    name         text COLLATE "C" NOT NULL,
    value        text NOT NULL,
    set_at       bigint NOT NULL,
    event_id     uuid NOT NULL,
    PRIMARY KEY (workspace_id, profile_id, name)
);

-- channel 0: every channel.
CREATE TABLE consents (
    workspace_id text COLLATE "C" NOT NULL,
    profile_id   uuid NOT NULL,
    purpose      text COLLATE "C" NOT NULL,
    channel      smallint NOT NULL,
    granted      boolean NOT NULL,
    set_at       bigint NOT NULL,
    event_id     uuid NOT NULL,
    PRIMARY KEY (workspace_id, profile_id, purpose, channel)
);

-- Links (kind 1: identifier -> profile, via the identifier that led there) and merges
-- (kind 2: other_id folded into profile_id, joined by identifier and via), in the order
-- they were made. rule: 1 deterministic, 2 probabilistic, 3 review.
CREATE TABLE evidence (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id     text COLLATE "C" NOT NULL,
    kind             smallint NOT NULL,
    profile_id       uuid NOT NULL,
    other_id         uuid,
    identifier_kind  text NOT NULL,
    identifier_value text NOT NULL,
    via_kind         text,
    via_value        text,
    event_id         uuid,
    rule             smallint NOT NULL,
    confidence       double precision NOT NULL,
    at               bigint NOT NULL,
    undone_at        bigint
);
CREATE INDEX evidence_profile ON evidence (workspace_id, profile_id, id);
CREATE INDEX evidence_other ON evidence (workspace_id, other_id, id) WHERE other_id IS NOT NULL;

-- Identifiers of erased people, as SHA-256 digests of "kind\0value": enough to refuse them,
-- nothing to recover them from.
CREATE TABLE erased_identifiers (
    workspace_id text COLLATE "C" NOT NULL,
    digest       bytea NOT NULL,
    erased_at    bigint NOT NULL,
    PRIMARY KEY (workspace_id, digest)
);

-- The receipt of each erasure (corvus.identity.v1.ErasureReceipt), returned again on repeat,
-- and the message ids still to erase from ingestion's log (newline-separated) until done.
CREATE TABLE erasures (
    workspace_id text COLLATE "C" NOT NULL,
    profile_id   uuid NOT NULL,
    receipt      bytea NOT NULL,
    pending      text,
    PRIMARY KEY (workspace_id, profile_id)
);

-- Pairs matching proposed for review. status: 1 pending, 2 accepted, 3 rejected, 4 obsolete.
CREATE TABLE match_candidates (
    workspace_id text COLLATE "C" NOT NULL,
    candidate_id uuid NOT NULL,
    profile_a    uuid NOT NULL,
    profile_b    uuid NOT NULL,
    probability  double precision NOT NULL,
    levels       text NOT NULL,
    status       smallint NOT NULL,
    proposed_at  bigint NOT NULL,
    reviewed_at  bigint,
    PRIMARY KEY (workspace_id, candidate_id)
);
CREATE INDEX match_candidates_status ON match_candidates (workspace_id, status, probability DESC);
