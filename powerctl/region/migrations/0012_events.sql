-- The event journal (issue 14, the live event stream): one row per
-- operation state change and per node power/responsiveness change,
-- written by triggers in the transaction of the change itself.
--
-- The public sequence (seq) is given at COMMIT, not when the row is
-- written: a deferred constraint trigger takes a transaction-level
-- advisory lock and only then draws the next value, so transactions
-- receive their numbers in the order they commit.  A reader that sees
-- seq N therefore also sees every seq below N that will ever exist: a
-- stream resumed "after N" can never miss an event committed late with a
-- smaller number.  The lock is the last one a transaction takes and is
-- held only through its commit, so it cannot deadlock with row locks.
CREATE SEQUENCE event_seq;

CREATE TABLE events (
    id bigserial PRIMARY KEY,  -- order of writing (within one transaction)
    seq bigint UNIQUE,         -- the public sequence, set at commit
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    type text NOT NULL CHECK (type IN ('op', 'node')),
    cluster text,
    data jsonb NOT NULL
);
CREATE INDEX events_at ON events (at);

-- The highest seq pruned so far: a client resuming from below it has
-- missed events that are gone, and is told so.
CREATE TABLE events_pruned (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    upto bigint NOT NULL
);
INSERT INTO events_pruned (upto) VALUES (0);

CREATE FUNCTION events_op() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, cluster, data) VALUES (
        'op',
        (SELECT cluster FROM nodes WHERE name = NEW.node),
        jsonb_build_object('op', jsonb_build_object(
            'id', NEW.id, 'node', NEW.node, 'action', NEW.action, 'state', NEW.state,
            'requester', NEW.requester, 'error', NEW.error, 'pserv', NEW.pserv,
            'agent', NEW.agent, 'observed_state', NEW.observed_state,
            'coalesced_into', NEW.coalesced_into, 'superseded_by', NEW.superseded_by,
            'cancelled_by', NEW.cancelled_by, 'requested_at', NEW.requested_at,
            'started_at', NEW.started_at, 'finished_at', NEW.finished_at)));
    RETURN NULL;
END $$;

CREATE FUNCTION events_node() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row nodes;
    change text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
        change := 'deleted';
    ELSE
        row := NEW;
        change := CASE TG_OP WHEN 'INSERT' THEN 'created' ELSE 'updated' END;
    END IF;
    INSERT INTO events (type, cluster, data) VALUES (
        'node', row.cluster,
        jsonb_build_object('change', change, 'node', jsonb_build_object(
            'name', row.name, 'cluster', row.cluster, 'power_state', row.power_state,
            'responsive', row.responsive, 'desired_state', row.desired_state,
            'last_error', row.last_error, 'last_changed_at', row.last_changed_at)));
    RETURN NULL;
END $$;

CREATE TRIGGER power_ops_events_insert AFTER INSERT ON power_ops
    FOR EACH ROW EXECUTE FUNCTION events_op();
CREATE TRIGGER power_ops_events_update AFTER UPDATE OF state ON power_ops
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION events_op();
CREATE TRIGGER nodes_events_insert AFTER INSERT ON nodes
    FOR EACH ROW EXECUTE FUNCTION events_node();
CREATE TRIGGER nodes_events_delete AFTER DELETE ON nodes
    FOR EACH ROW EXECUTE FUNCTION events_node();
CREATE TRIGGER nodes_events_update AFTER UPDATE ON nodes
    FOR EACH ROW WHEN (OLD.power_state IS DISTINCT FROM NEW.power_state
                       OR OLD.responsive IS DISTINCT FROM NEW.responsive
                       OR OLD.desired_state IS DISTINCT FROM NEW.desired_state
                       OR OLD.cluster IS DISTINCT FROM NEW.cluster)
    EXECUTE FUNCTION events_node();

-- At commit: number the transaction's events in the order they were
-- written, under the lock (see above), and announce each number.
CREATE FUNCTION events_number() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7308604897068083571);  -- 'events!s' as bigint
    n := nextval('event_seq');
    UPDATE events SET seq = n WHERE id = NEW.id;
    PERFORM pg_notify('events', n::text);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER events_numbered AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION events_number();
