-- Reconciliation (powerctl.region.drift): a poll that observes a node in
-- another state than its desired one, with no operation open, records
-- drift -- since when, what it observed, on how many consecutive polls.
-- No drift: drift_since IS NULL (and drift_polls = 0).
ALTER TABLE nodes ADD COLUMN drift_since timestamptz;
ALTER TABLE nodes ADD COLUMN drift_observed text
    CHECK (drift_observed IN ('on', 'off'));
ALTER TABLE nodes ADD COLUMN drift_polls integer NOT NULL DEFAULT 0;

-- What a cluster does about drift: report it only, or enforce the desired
-- state with a journalled operation requested by 'reconcile'.
ALTER TABLE clusters ADD COLUMN drift_policy text NOT NULL DEFAULT 'report'
    CHECK (drift_policy IN ('report', 'enforce'));
