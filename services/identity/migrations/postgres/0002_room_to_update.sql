-- Every batch rewrites the rows of the profiles it touches (seen times, count, version)
-- and their newest traits. Room left on each page lets Postgres keep the new version on
-- the same page (a HOT update), touching no index.
ALTER TABLE profiles SET (fillfactor = 70);
ALTER TABLE traits SET (fillfactor = 70);
