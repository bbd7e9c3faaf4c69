"""
What several regions on one database agree on, through PostgreSQL alone:

* ``LISTEN power_ops`` / ``LISTEN assignments``: a request committed by any
  region reaches the region the node's owner is connected to at once, and
  an assignment change reaches every region whose pservs it concerns;
* leadership for periodic jobs: the region holding a session-level
  advisory lock on its listening connection runs the assignment rounds
  (and the pod manager probes); if it dies, its session ends, the lock is
  free, and another region takes it at its next tick.

The connection is checked at every tick and re-opened (with its LISTENs)
when it was lost, e.g. across a database restart; while it is down this
region is simply not the leader and relies on the pservs' own refresh
rounds.
"""

from twisted.internet import defer, task
from twisted.logger import Logger
from txpostgres import txpostgres

#: The advisory lock whose holder runs the periodic jobs.
LEADER_LOCK = 0x6C656164  # "lead"

CHANNELS = ("power_ops", "assignments")


class Coordinator:
    log = Logger()

    def __init__(self, dsn, reactor, on_notify, jobs, interval=10.0):
        """
        :param on_notify: called with ``(channel, payload)`` for each notification.
        :param jobs: an async callable run at each tick while we lead.
        """
        self.dsn = dsn
        self.reactor = reactor
        self.on_notify = on_notify
        self.jobs = jobs
        self.interval = interval
        self.leader = False
        self._conn = None
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = reactor
        self._current = None

    def start(self):
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("region coordination stopped", f))

    async def stop(self):
        if self._loop.running:
            self._loop.stop()
        if self._current is not None:
            await defer.Deferred.fromCoroutine(_wait(self._current))
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.leader = False

    def tick(self):
        d = self._current = defer.ensureDeferred(self._tick())
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
                self.log.warn("lost the listening connection ({why}); re-opening it", why=e)
                self._drop()
        conn = txpostgres.Connection(reactor=self.reactor)
        try:
            await conn.connect(self.dsn)
            for channel in CHANNELS:
                await conn.runOperation(f"LISTEN {channel}")
        except Exception as e:
            self.log.warn("cannot open the listening connection: {why}", why=e)
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
        d = defer.maybeDeferred(self.on_notify, notify.channel, notify.payload)
        d.addErrback(lambda f: self.log.failure(
            "handling a {channel} notification", f, channel=notify.channel))


async def _wait(d):
    """Wait for ``d`` without taking its result."""
    waiter = defer.Deferred()
    d.addBoth(lambda r: (waiter.callback(None), r)[1])
    await waiter
