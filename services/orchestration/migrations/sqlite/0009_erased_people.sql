-- An erased person's row stays, marked, with nothing of theirs but a random id: a
-- decision read before the erasure and written after it finds the mark and is not
-- written (the erasure marks first, then deletes what was written before the mark).
ALTER TABLE people ADD COLUMN erased boolean NOT NULL DEFAULT false;
