-- Pages of nodes filtered on the server (issue 14, item 3): a keyset page
-- is "WHERE <filter> AND name > cursor ORDER BY name LIMIT n", and each of
-- these indexes answers its filter as one range already in name order.
--
-- (cluster, name): a page of one cluster (?cluster=, the status page's
-- cluster filter) reads just that page, instead of every node of the
-- cluster to sort them; it also serves every "cluster = X" lookup the
-- old single-column index served, so that one goes.
CREATE INDEX nodes_cluster_name ON nodes (cluster, name);
DROP INDEX nodes_cluster;

-- (power_state, name): ?power_state=error (or unknown) matches few nodes;
-- without it a page scanned the whole table (1.4 ms at 10,000 nodes,
-- linear beyond).  Polls that leave the power state as it was stay HOT
-- updates; only a change of power state writes this index.
CREATE INDEX nodes_power_state_name ON nodes (power_state, name);
