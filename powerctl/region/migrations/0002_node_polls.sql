-- When a node's BMC last answered: the responsiveness rule ("non-responsive
-- only after more than two failed polls AND a grace time since the last
-- good poll") needs it, and failed_polls alone cannot say how long ago.
ALTER TABLE nodes ADD COLUMN last_good_poll_at timestamptz;

-- The operations list is filtered by state and read newest first.
CREATE INDEX power_ops_state ON power_ops (state, id DESC);
