"""
What several regions on one database agree on, through PostgreSQL alone:

* ``LISTEN power_ops`` / ``LISTEN assignments``: a request committed by any
  region reaches the region the node's owner is connected to at once, and
  an assignment change reaches every region whose pservs it concerns;
  ``LISTEN tokens``: a token revoked through any region is forgotten by
  every region's token cache (:mod:`powerctl.region.tokens`);
* leadership for periodic jobs: the region holding a session-level
  advisory lock on its listening connection runs the assignment rounds
  (and the pod manager probes); if it dies, its session ends, the lock is
  free, and another region takes it at its next tick.

The connection is checked at every tick and re-opened (with its LISTENs)
when it was lost, e.g. across a database restart; while it is down this
region is simply not the leader and relies on the pservs' own refresh
rounds.

The coordinator is a ``TimerService``: the region's ``MultiService`` starts
and stops it; stopping waits for the tick under way, then closes the
listening connection (which gives up the leadership).
"""

import inspect

import psycopg2
from twisted.application.internet import TimerService
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres

#: The advisory lock whose holder runs the periodic jobs.
LEADER_LOCK = 0x6C656164  # "lead"

# events: powerctl.region.events; tokens: revocations (powerctl.region.tokens)
CHANNELS = ("power_ops", "assignments", "events", "tokens")

#: How a connection to PostgreSQL fails when the server is down, restarting
#: or unreachable (psycopg2 errors; txpostgres's own for a connection it
#: knows dead or still polling; the socket closing under it).
DATABASE_GONE = (psycopg2.Error, reconnection.ConnectionDead, txpostgres.AlreadyPolling,
                  txpostgres.UnexpectedPollResult, error.ConnectionClosed)


class PromptConnection(txpostgres.Connection):
    """
    A listening connection that hands a few notifications to its observers
    in the reactor turn that read them.

    txpostgres passes every batch through its Cooperator: a task, a
    scheduled tick and a Deferred per observer call, for each read -- paid
    for every power request (it NOTIFYs its operation and its events),
    about a tenth of the region's CPU for a POST.  A batch larger than
    :attr:`INLINE` (a bulk commit, thousands of events) still goes through
    the Cooperator, which spreads it over reactor turns.  An observer's
    failure (raised, or a failing Deferred or coroutine) is logged, as
    txpostgres does, and the others still run.
    """

    INLINE = 64
    log = Logger()

    def checkForNotifies(self):
        notifies = self._connection.notifies
        if not notifies:
            return
        if len(notifies) > self.INLINE:
            super().checkForNotifies()
            return
        batch = notifies[:]
        del notifies[:]
        for notify in batch:
            for observer in self.getNotifyObservers():
                _call_logged(self.log, "a NOTIFY observer failed", observer, notify)


def _call_logged(log, what, f, *args):
    """
    ``f(*args)``, its failure logged as ``what`` whether it raises or
    returns a failing Deferred or coroutine; no Deferred is made for a
    plain result (the common case, a notification this region ignores).
    """
    try:
        result = f(*args)
    except Exception:
        log.failure(what)
        return
    if isinstance(result, defer.Deferred) or inspect.iscoroutine(result):
        d = defer.ensureDeferred(result)
        if not d.called or d.paused or isinstance(d.result, Failure):  # else: done, well
            d.addErrback(lambda failure: log.failure(what, failure))


class Coordinator(TimerService):
    log = Logger()

    def __init__(self, dsn, reactor, on_notify, jobs, interval=10.0):
        """
        :param reactor: the reactor, also the ticks' clock (a ``task.Clock``
            in tests).
        :param on_notify: called with ``(channel, payload)`` for each notification.
        :param jobs: an async callable run at each tick while we lead.
        """
        super().__init__(interval, self.tick)
        self.clock = reactor  # TimerService's time source
        self.dsn = dsn
        self.reactor = reactor
        self.on_notify = on_notify
        self.jobs = jobs
        self.interval = interval
        self.leader = False
        self._conn = None

    def stopService(self):
        """Stop ticking; fires once the tick under way is over and the connection closed."""
        stopped = super().stopService() if self.running else defer.succeed(None)
        return stopped.addCallback(lambda _: self._close())

    def _close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.leader = False

    def tick(self):
        """
        One tick.  Never fails: a failure returned to the TimerService
        would stop the ticks for good, so a bug is logged and the next tick
        runs.
        """
        d = defer.ensureDeferred(self._tick())
        d.addErrback(lambda f: self.log.failure("coordination tick", f))
        return d

    async def _tick(self):
        if not await self._connected():
            return
        if not self.leader:
            row = await self._conn.runQuery("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
            self.leader = bool(row[0][0])
            if self.leader:
                self.log.info("this region now runs the periodic jobs")
        if self.leader:
            await self.jobs()

    async def _connected(self):
        """Whether the listening connection is up (re-opened if it was lost)."""
        if self._conn is not None:
            try:
                await self._conn.runQuery("SELECT 1")
                return True
            except Exception as e:
                # Re-opened whatever the cause; only a bug gets a traceback.
                if isinstance(e, DATABASE_GONE):
                    self.log.warn("lost the listening connection ({why}); re-opening it",
                                  why=e)
                else:
                    self.log.failure("checking the listening connection failed unexpectedly;"
                                     " re-opening it")
                self._drop()
        conn = PromptConnection(reactor=self.reactor)
        try:
            await conn.connect(self.dsn)
            for channel in CHANNELS:
                await conn.runOperation(f"LISTEN {channel}")
        except Exception as e:
            if isinstance(e, DATABASE_GONE):
                self.log.warn("cannot open the listening connection: {why}", why=e)
            else:
                self.log.failure("opening the listening connection failed unexpectedly")
            try:
                conn.close()
            except Exception:
                pass  # it never opened; nothing to close
            return False
        conn.addNotifyObserver(self._notified)
        self._conn = conn
        return True

    def _drop(self):
        self.leader = False  # the lock went with the session
        conn, self._conn = self._conn, None
        try:
            conn.close()
        except Exception:
            pass  # already broken: closing is best effort

    def _notified(self, notify):
        _call_logged(self.log, f"handling a {notify.channel} notification", self.on_notify,
                     notify.channel, notify.payload)

