-- Event counts per channel and type are counted from profile_events when a profile is
-- read (then cached), instead of a row upserted for every event resolved.
DROP TABLE event_counts;
