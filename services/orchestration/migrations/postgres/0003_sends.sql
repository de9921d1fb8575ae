-- Where a workspace's sends on a channel go (JSON: a webhook with its secret, or the
-- log; its rate, attempts and timeout).
CREATE TABLE connectors (
    workspace_id text NOT NULL,
    channel      text NOT NULL,
    definition   text NOT NULL,
    PRIMARY KEY (workspace_id, channel)
);

-- One row per decision that sends, written in the decision's transaction: a restart
-- finds every send still to make here, and the decision id keys it, so none is made
-- twice. A replica takes a batch by setting lease_until; another takes what a lease
-- left behind only once it has run out.
CREATE TABLE sends (
    decision_id     uuid PRIMARY KEY,
    workspace_id    text NOT NULL,
    profile_id      uuid NOT NULL,
    campaign        text NOT NULL,
    channel         text NOT NULL,
    -- pending, sent or dead
    state           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    send_at         bigint NOT NULL,
    next_attempt_at bigint NOT NULL,
    lease_until     bigint,
    sent_at         bigint,
    last_error      text NOT NULL DEFAULT '',
    receipt         text NOT NULL DEFAULT '',
    recipient       text NOT NULL,
    payload         text NOT NULL,
    -- Whether the send's outcome went back into Corvus as an event.
    reported        boolean NOT NULL DEFAULT false
);
CREATE INDEX sends_due ON sends (next_attempt_at) WHERE state = 'pending';
CREATE INDEX sends_unreported ON sends (workspace_id) WHERE state <> 'pending' AND NOT reported;
CREATE INDEX sends_of_workspace ON sends (workspace_id, decision_id);
CREATE INDEX sends_of_person ON sends (workspace_id, profile_id);
