"""
Command prioritisation: at most ``size`` power actions drive hardware at
once on a pserv, and when slots are scarce the most urgent waiting action
is served first -- changes before queries, ``off`` (fencing) before ``on``,
in the registry's rank order.  Equal priorities are served in arrival order.
"""

import heapq
import itertools

from twisted.internet import defer

from powerctl.power import Action
from powerctl.registry.policy import DEFAULT_RANKS


def priority_of(action, ranks=DEFAULT_RANKS):
    """Rank of a changing action; queries come after every change."""
    action = Action.parse(action)
    return 0 if action is Action.QUERY else ranks[action]


class PrioritySlots:
    def __init__(self, size):
        if size < 1:
            raise ValueError("at least one slot is needed")
        self.size = size
        self.busy = 0
        self._waiting = []  # heap of (-priority, arrival, Deferred)
        self._arrivals = itertools.count()

    def acquire(self, priority):
        """A Deferred that fires when a slot is ours; cancelling gives up the place."""
        if self.busy < self.size and not self._live_waiters():
            self.busy += 1
            return defer.succeed(None)
        d = defer.Deferred(lambda d: None)  # cancelled waiters are skipped in release
        heapq.heappush(self._waiting, (-priority, next(self._arrivals), d))
        return d

    def release(self):
        """Give a slot back: it goes to the most urgent live waiter."""
        while self._waiting:
            _, _, d = heapq.heappop(self._waiting)
            if not d.called:
                d.callback(None)
                return
        self.busy -= 1

    def _live_waiters(self):
        while self._waiting and self._waiting[0][2].called:
            heapq.heappop(self._waiting)
        return bool(self._waiting)

    def run(self, priority, work):
        """Run ``work()`` (returning a Deferred) in a slot; cancellable throughout."""

        def start(_):
            d = defer.maybeDeferred(work)

            def done(result):
                self.release()
                return result

            return d.addBoth(done)

        return self.acquire(priority).addCallback(start)
