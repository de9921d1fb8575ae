-- Replicas are woken by a NOTIFY the writing process sends after its commit, on a
-- statement of its own (corvus-log's PgEventLog), not by a trigger in the writing
-- transaction: a notifying commit waits for a lock every other notifying commit of the
-- database holds through its WAL flush.
DROP TRIGGER IF EXISTS events_notify ON events;
DROP FUNCTION IF EXISTS notify_events();
