-- For a log relayed to a JetStream stream (`jetstream` in the configuration): the
-- stream sequence each entry was given, so that erasing the entry erases its copy in the
-- stream too; and the stream sequences of erased entries, until the relay has erased
-- them from the stream.
ALTER TABLE events ADD COLUMN stream_seq bigint;

CREATE TABLE stream_erasures (
    seq bigint PRIMARY KEY
);
