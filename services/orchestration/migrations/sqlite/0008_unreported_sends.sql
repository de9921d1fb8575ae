-- The sends ended and not yet reported back as events, in the order delivery reports
-- them (by decision id): the partial index was on workspace_id, which that read does
-- not ask by, so the planner walked every send by its key to find the few unreported.
DROP INDEX sends_unreported;
CREATE INDEX sends_unreported ON sends (decision_id) WHERE state <> 'pending' AND NOT reported;
