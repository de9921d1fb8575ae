-- For a log relayed to a JetStream stream (`jetstream` in the configuration), so that
-- erasing an entry erases its copy in the stream too. The relay records each batch it
-- published: its entries' positions with the stream sequence each was given (`entries`:
-- (tx_id, seq, stream sequence) as three little-endian int8 each), one row a batch.
-- An erasure queues the positions it deleted while a relay exists; the relay erases
-- their messages from the stream and drops the queued rows.
CREATE TABLE stream_batches (
    first_tx  bigint NOT NULL,
    first_seq bigint NOT NULL,
    last_tx   bigint NOT NULL,
    last_seq  bigint NOT NULL,
    entries   bytea NOT NULL,
    PRIMARY KEY (last_tx, last_seq)
);

CREATE TABLE stream_erasures (
    tx_id bigint NOT NULL,
    seq   bigint NOT NULL,
    PRIMARY KEY (tx_id, seq)
);
