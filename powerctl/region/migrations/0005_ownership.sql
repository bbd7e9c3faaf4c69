-- Exactly one pserv drives a node: leases, epochs (fencing tokens) and owners.
--
-- A lease is granted to one pserv process (its random instance id) when it
-- registers, under a new epoch from a sequence, so epochs only grow.  Its
-- heartbeats renew it through whichever region they reach.  A node's
-- owner_epoch names the lease it is driven under; anything that carries
-- another epoch is refused.
CREATE SEQUENCE pserv_epochs;

CREATE TABLE leases (
    epoch bigint PRIMARY KEY,
    pserv text NOT NULL,
    cluster text NOT NULL REFERENCES clusters (name),
    instance text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    released boolean NOT NULL DEFAULT false
);
CREATE INDEX leases_live ON leases (cluster, expires_at) WHERE NOT released;

ALTER TABLE nodes ADD COLUMN owner_epoch bigint;
-- The epoch a live owner must hand the node over to (it releases it first).
ALTER TABLE nodes ADD COLUMN handoff_epoch bigint;
CREATE INDEX nodes_owner_epoch ON nodes (owner_epoch);

-- The epoch under which an operation was started on the hardware.
ALTER TABLE power_ops ADD COLUMN epoch bigint;
