-- A node's operation history outlives the node: deleting a node cancels
-- its open operations and keeps the journal (the node name stays as text).
ALTER TABLE power_ops DROP CONSTRAINT power_ops_node_fkey;

-- Who cancelled an operation, and who confirmed a manual one: every
-- operator write is attributed in the journal.
ALTER TABLE power_ops ADD COLUMN cancelled_by text;
ALTER TABLE power_ops ADD COLUMN confirmed_by text;
