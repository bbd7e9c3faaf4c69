-- Fencing and power topology (issue 13).
-- A new action, 'fence': a verified off that outranks every other.
ALTER TABLE power_ops DROP CONSTRAINT IF EXISTS power_ops_action_check;
ALTER TABLE power_ops ADD CONSTRAINT power_ops_action_check
    CHECK (action IN ('on', 'off', 'soft-off', 'cycle', 'query', 'fence'));
-- What the topology reported beside the state: the acting level, each of
-- its devices with the state it reported (or its error), a warning when the
-- success was degraded, the levels that failed before; for a fence
-- coalesced into a recent one, which.  NULL when there is nothing to say.
ALTER TABLE power_ops ADD COLUMN detail jsonb;
-- The last fence of a node that succeeded, for fence coalescing
-- (powerctl.region.fencing): found by node and action.
CREATE INDEX power_ops_fences ON power_ops (node, id) WHERE action = 'fence';
