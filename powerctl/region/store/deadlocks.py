"""
A transaction PostgreSQL chose as a deadlock victim, retried once.

Every multi-row writer locks rows in one global order (``nodes`` by name,
then ``power_ops`` by id; see the README's "Row-lock order"), so powerctl's
own transactions should never deadlock with one another.  Another program
on the database, or an order this code got wrong, still could: then the
victim's whole transaction has been rolled back and running the method
again is safe (it decides afresh from what it reads).  The deadlock is
logged once with PostgreSQL's account of the cycle; a second failure goes
to the caller like any other error -- never swallowed.

The retry waits :data:`RETRY_PAUSE` first.  Retried at once, the victim's
new transaction could take its first row back before the survivor, woken
by the rollback, took it -- the same cycle again, and a second (final)
failure: seen in a CI run under load.
"""

import functools

import psycopg2.errors
from twisted.internet import defer, task
from twisted.logger import Logger

_log = Logger()

#: Seconds a deadlock victim waits before its one retry (see above).
RETRY_PAUSE = 0.2


def retried_once(method):
    """
    Wrap a store method (a :func:`~powerctl.region.store.base.transaction`,
    answering a Deferred): run again once on ``DeadlockDetected``.  Logs
    through the instance's ``log`` when it has one.
    """

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        async def attempt():
            try:
                return await method(self, *args, **kwargs)
            except psycopg2.errors.DeadlockDetected as e:
                getattr(self, "log", _log).warn(
                    "{what}: chosen as a deadlock victim, retried once: {why}",
                    what=f"{type(self).__name__}.{method.__name__}", why=str(e).strip())
            await task.deferLater(getattr(self, "clock", None) or _reactor(), RETRY_PAUSE,
                                  lambda: None)
            return await method(self, *args, **kwargs)

        return defer.ensureDeferred(attempt())

    return run


def _reactor():
    from twisted.internet import reactor

    return reactor
