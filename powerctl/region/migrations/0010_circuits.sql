-- Inrush: nodes name the electrical circuit they are on; each circuit of a
-- cluster may have a budget of power-ons (at most max_on at once, starts at
-- least spacing seconds apart).  A circuit without a row has no budget.
-- All nodes of one circuit share one owning pserv (powerctl.ownership),
-- which enforces the budget on its own.
ALTER TABLE nodes ADD COLUMN circuit text;
CREATE INDEX nodes_circuit ON nodes (cluster, circuit) WHERE circuit IS NOT NULL;

CREATE TABLE circuits (
    cluster text NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    name text NOT NULL,
    max_on integer NOT NULL CHECK (max_on >= 1),
    spacing double precision NOT NULL DEFAULT 0 CHECK (spacing >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster, name)
);

-- A circuit moves to its new owner in one piece: a node of a circuit that
-- its old owner has released waits (handoff_released) until every node of
-- that circuit the old owner held is released, so two pservs never start
-- power-ons on one circuit at once.  Meaningful only while handoff_epoch is set.
ALTER TABLE nodes ADD COLUMN handoff_released boolean NOT NULL DEFAULT false;
