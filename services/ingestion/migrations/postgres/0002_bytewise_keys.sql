-- Ids compare byte by byte: they are keys, not words, and the database's default
-- collation (strcoll) costs a good share of every index insert.
ALTER TABLE events
    ALTER COLUMN workspace_id TYPE text COLLATE "C",
    ALTER COLUMN message_id TYPE text COLLATE "C";
ALTER TABLE dead_letters ALTER COLUMN workspace_id TYPE text COLLATE "C";
ALTER TABLE consumers ALTER COLUMN name TYPE text COLLATE "C";
