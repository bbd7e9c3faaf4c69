-- BMC lock-outs (issue 10): the credentials of a node's agent that its
-- device refused too often, so that no pserv tries them again -- not the
-- one that found it after a restart, nor the next owner after a hand-over
-- -- until the credentials change (the row goes with the change of the
-- node's power configuration, or of a pod manager it uses) or an operator
-- clears it.  Nothing secret is kept here.
CREATE TABLE lockouts (
    id bigserial UNIQUE,
    node text NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    agent integer NOT NULL CHECK (agent >= 0),
    failures integer NOT NULL,
    reason text NOT NULL,
    pserv text NOT NULL,
    locked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, agent)
);
