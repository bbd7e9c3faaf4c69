-- The region's state: clusters and their pservs, pod managers, nodes with
-- desired versus current power state, and the journal of power operations.

CREATE TABLE clusters (
    name text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pservs (
    name text PRIMARY KEY,
    cluster text NOT NULL REFERENCES clusters (name),
    version text NOT NULL DEFAULT '',
    region text,                       -- the region process it is connected to
    connected boolean NOT NULL DEFAULT false,
    connected_at timestamptz,
    last_heartbeat timestamptz,
    actions_in_flight integer NOT NULL DEFAULT 0
);

CREATE TABLE pod_managers (
    uuid uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    driver text NOT NULL DEFAULT 'redfish',
    username text NOT NULL DEFAULT '',
    password text NOT NULL DEFAULT '',  -- write-only through the API
    url text NOT NULL,
    status text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline')),
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE nodes (
    name text PRIMARY KEY,
    cluster text NOT NULL REFERENCES clusters (name),
    power jsonb NOT NULL,
    desired_state text CHECK (desired_state IN ('on', 'off')),
    power_state text NOT NULL DEFAULT 'unknown'
        CHECK (power_state IN ('on', 'off', 'unknown', 'error')),
    responsive boolean NOT NULL DEFAULT true,
    failed_polls integer NOT NULL DEFAULT 0,
    last_error text,
    last_queried_at timestamptz,
    last_changed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nodes_cluster ON nodes (cluster);

-- Which pod managers a node's agents use, so that deleting one still in
-- use is refused by the database itself.
CREATE TABLE node_pod_managers (
    node text NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    pod_manager uuid NOT NULL REFERENCES pod_managers (uuid) ON DELETE RESTRICT,
    PRIMARY KEY (node, pod_manager)
);

CREATE TABLE power_ops (
    id bigserial PRIMARY KEY,
    node text NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    action text NOT NULL CHECK (action IN ('on', 'off', 'soft-off', 'cycle', 'query')),
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'superseded', 'cancelled')),
    coalesced_into bigint REFERENCES power_ops (id) ON DELETE SET NULL,
    superseded_by bigint REFERENCES power_ops (id) ON DELETE SET NULL,
    requester text NOT NULL DEFAULT '',
    requested_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    pserv text,
    agent text,
    observed_state text,
    error text
);
CREATE INDEX power_ops_open ON power_ops (node) WHERE state IN ('pending', 'running');
CREATE INDEX power_ops_node ON power_ops (node, id DESC);
