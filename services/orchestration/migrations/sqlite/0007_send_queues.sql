-- Each queue's (workspace and channel) pending sends in the order they come due: what a
-- claim reads, without passing over other queues' sends.
CREATE INDEX sends_queue ON sends (workspace_id, channel, next_attempt_at) WHERE state = 'pending';
