"""
The event journal (``events``, migration 0011): what the live stream
(:mod:`powerctl.region.events`) replays and tails.

Rows are written by triggers in the transaction of each change and
numbered at commit in commit order (see the migration), so reading
``seq > N`` in order never skips an event that commits later with a
smaller number: every number a reader has not seen yet is above the ones
it has.  Numbers of rolled-back transactions are simply never used.
"""

import attrs

from powerctl.region.errors import InvalidInput
from powerctl.region.store.base import MAX_BIGINT, KindStore, page_limit, transaction

EVENT_TYPES = ("op", "node")


@attrs.frozen
class Event:
    """One journalled event: its number, type, time, cluster and payload."""

    seq: int
    type: str
    at: str
    cluster: str = None
    data: dict = attrs.field(factory=dict)
    #: The event as the stream sends it, once encoded (shared by every subscriber).
    wire: bytes = attrs.field(default=None, eq=False, repr=False)

    def as_json(self):
        """What the stream sends as the event's ``data``."""
        return dict(self.data, seq=self.seq, type=self.type, at=self.at, cluster=self.cluster)


def _event(row):
    return Event(seq=row["seq"], type=row["type"], at=row["at"].isoformat(),
                 cluster=row["cluster"], data=row["data"])


def check_seq(field, value):
    """A sequence number a client gives (0: from the start)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{field}: must be an event sequence number (an integer)") from None
    if isinstance(value, bool) or not 0 <= number <= MAX_BIGINT:
        raise InvalidInput(f"{field}: must be an integer from 0 to {MAX_BIGINT}")
    return number


class EventStore(KindStore):
    """The journal of events, read in sequence order; pruned by age."""

    @transaction
    async def after(self, tx, seq, limit=1000, clusters=None):
        """
        Up to ``limit`` events numbered above ``seq``, in order; with
        ``clusters`` (a collection of names), only theirs.
        """
        rows = await tx.rows(
            "SELECT seq, type, at, cluster, data FROM events WHERE seq > %s"
            " AND (%s::text[] IS NULL OR cluster = ANY(%s::text[])) ORDER BY seq LIMIT %s",
            (check_seq("after", seq), None if clusters is None else sorted(clusters),
             None if clusters is None else sorted(clusters),
             page_limit(limit, 1000, 100_000)))
        return [_event(r) for r in rows]

    @transaction
    async def last_seq(self, tx):
        """The highest number given so far (0 when none): where a live tail starts."""
        row = await tx.row("SELECT COALESCE(max(seq), 0) AS seq FROM events")
        return row["seq"]

    @transaction
    async def pruned_upto(self, tx):
        """Events up to this number may have been pruned (0: none ever were)."""
        row = await tx.row("SELECT upto FROM events_pruned")
        return row["upto"] if row else 0

    @transaction
    async def prune(self, tx, older_than, limit=10_000):
        """
        Delete up to ``limit`` numbered events older than ``older_than``
        seconds, oldest first, and record how far pruning went.  Answers
        how many were deleted (a caller repeats while it is ``limit``).
        """
        rows = await tx.rows(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE seq IS NOT NULL"
            " AND at < now() - make_interval(secs => %s) ORDER BY seq LIMIT %s)"
            " RETURNING seq", (float(older_than), int(limit)))
        if rows:
            await tx.rows("UPDATE events_pruned SET upto = GREATEST(upto, %s)",
                          (max(r["seq"] for r in rows),))
        return len(rows)
