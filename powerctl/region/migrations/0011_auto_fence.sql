-- Automatic fencing of non-responsive hosts (issue 13).
-- When a node turned non-responsive (NULL while it is responsive): the grace
-- of the automatic fence and the storm window count from it.
ALTER TABLE nodes ADD COLUMN nonresponsive_since timestamptz;
UPDATE nodes SET nonresponsive_since = now() WHERE NOT responsive;
-- A cluster's automatic fencing policy (powerctl.region.autofence); NULL: off.
ALTER TABLE clusters ADD COLUMN auto_fence jsonb;
