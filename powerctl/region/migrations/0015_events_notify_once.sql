-- One NOTIFY events per transaction instead of one per event (issue 14).
--
-- Listeners never used the payload (a region reads what follows its last
-- sequence number on any notification), but a payload that differed per
-- event (its number) defeated PostgreSQL's folding of identical
-- notifications within a transaction: a bulk power-on of 5,000 nodes sent
-- each region 30,000 notifications to read and dispatch.  With one payload
-- the transaction's notifications fold into one, delivered at its commit.
CREATE OR REPLACE FUNCTION events_number() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7308604897068083571);  -- 'events!s' as bigint
    n := nextval('event_seq');
    UPDATE events SET seq = n WHERE id = NEW.id;
    PERFORM pg_notify('events', '');
    RETURN NULL;
END $$;
