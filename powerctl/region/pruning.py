"""
Keeps the operation journal bounded: the leader region deletes ended
operations older than ``journal_keep_days`` (region configuration; 0 keeps
them for ever).

The journal is the record of who powered what and how it ended, so the
default keeps three months; the audit log (who changed what through the
API) is not pruned here: its retention is the site's policy.  One round
deletes at most ``batch`` rows per transaction and repeats until nothing
is left to delete or ``rounds`` is spent, so a large backlog is worked off
over several rounds without one long transaction.

A ``TimerService``: the region's ``MultiService`` starts and stops it, and
stopping waits for the round under way.
"""

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from powerctl.region.coordination import DATABASE_GONE


class JournalPruner(TimerService):
    """Every ``interval`` seconds of ``clock``, while ``leader()`` is true."""

    log = Logger()

    def __init__(self, ops, clock, keep_days, interval=3600.0, batch=10_000, rounds=10,
                 leader=None):
        super().__init__(interval, self._round)
        self.clock = clock  # TimerService's time source
        self.ops = ops
        self.keep_days = keep_days
        self.batch = batch
        self.rounds = rounds
        self.leader = leader

    async def prune_once(self):
        """One round: answers how many operations left the journal."""
        if self.leader is not None and not self.leader():
            return 0
        total = 0
        for _ in range(self.rounds):
            deleted = await self.ops.prune(self.keep_days, limit=self.batch)
            total += deleted
            if deleted < self.batch:
                break
        if total:
            self.log.info("journal: pruned {n} operations ended more than {days:g} days ago",
                          n=total, days=self.keep_days)
        return total

    def _round(self):
        d = defer.ensureDeferred(self.prune_once())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure):
        # The next round retries; a database that is away is logged as such.
        if failure.check(*DATABASE_GONE):
            self.log.warn("journal pruning skipped: the database is unreachable ({why})",
                          why=failure.getErrorMessage())
        else:
            self.log.failure("journal pruning failed", failure)
