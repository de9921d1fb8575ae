-- Each save of a model counts up its version, so that a process keeping the decoded
-- models learns they changed from one small read.
ALTER TABLE models ADD COLUMN version bigint NOT NULL DEFAULT 1;
