"""
Keeps the region's append-only tables bounded: the leader region deletes
old rows in bounded batches, every ``interval`` seconds.

* the operation journal: ended operations older than ``journal_keep_days``
  (region configuration; 0 keeps them for ever).  It is the record of who
  powered what and how it ended, so the default keeps three months;
* the event journal behind ``GET /v1/events``: events older than
  ``event_retention`` seconds (a client resuming from before that is told
  ``event: lost``).

The audit log (who changed what through the API) is not pruned here: its
retention is the site's policy.  One round deletes at most ``batch`` rows
per transaction and repeats until nothing is left to delete or ``rounds``
is spent, so a large backlog is worked off over several rounds without one
long transaction.

A ``TimerService``: the region's ``MultiService`` starts and stops it, and
stopping waits for the round under way.
"""

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from powerctl.region.coordination import DATABASE_GONE


class RetentionPruner(TimerService):
    """
    Every ``interval`` seconds of ``clock``, while ``leader()`` is true,
    calls ``prune(limit)`` (a Deferred of how many rows went) until a batch
    comes back short.  ``what`` names the rows in the log.
    """

    log = Logger()

    def __init__(self, prune, clock, what, interval=3600.0, batch=10_000, rounds=10,
                 leader=None):
        super().__init__(interval, self._round)
        self.clock = clock  # TimerService's time source
        self.prune = prune
        self.what = what
        self.batch = batch
        self.rounds = rounds
        self.leader = leader

    async def prune_once(self):
        """One round: answers how many rows were deleted."""
        if self.leader is not None and not self.leader():
            return 0
        total = 0
        for _ in range(self.rounds):
            deleted = await self.prune(self.batch)
            total += deleted
            if deleted < self.batch:
                break
        if total:
            self.log.info("pruned {n} {what}", n=total, what=self.what)
        return total

    def _round(self):
        d = defer.ensureDeferred(self.prune_once())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure):
        # The next round retries; a database that is away is logged as such.
        if failure.check(*DATABASE_GONE):
            self.log.warn("pruning {what} skipped: the database is unreachable ({why})",
                          what=self.what, why=failure.getErrorMessage())
        else:
            self.log.failure("pruning {what} failed", failure, what=self.what)


def journal_pruner(ops, clock, keep_days, **kwargs):
    """Ended operations older than ``keep_days`` days leave the journal."""
    return RetentionPruner(lambda limit: ops.prune(keep_days, limit=limit), clock,
                           f"operations ended more than {keep_days:g} days ago", **kwargs)


def event_pruner(events, clock, retention, **kwargs):
    """Events older than ``retention`` seconds leave the event journal."""
    kwargs.setdefault("interval", 60.0)
    return RetentionPruner(lambda limit: events.prune(retention, limit=limit), clock,
                           f"events older than {retention:g} s", **kwargs)
