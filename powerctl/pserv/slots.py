"""
Command prioritisation: at most ``size`` power actions drive hardware at
once on a pserv, and when slots are scarce the most urgent waiting action
is served first -- changes before queries, ``off`` (fencing) before ``on``,
in the registry's rank order.  Equal priorities are served in arrival order.

Each waiter (and each holder, for work started with :meth:`PrioritySlots.run`)
may carry a label -- ``info``, a small dict such as ``{"node", "operation_id",
"action"}`` -- so that :meth:`PrioritySlots.snapshot` can say who holds the
slots and who waits for one, in the order they will be served, and since when.
"""

import heapq
import itertools
import time

from twisted.internet import defer

from powerctl.power import Action
from powerctl.registry.policy import DEFAULT_RANKS


def priority_of(action, ranks=DEFAULT_RANKS):
    """Rank of a changing action; queries come after every change."""
    action = Action.parse(action)
    # (Any number below the lowest rank orders queries the same: make
    # mutate's 0 -> -1 is equivalent; only a slot snapshot's number differs.)
    return 0 if action is Action.QUERY else ranks[action]


class _WallClock:
    """The clock used when none is given: seconds since the epoch."""

    @staticmethod
    def seconds():
        return time.time()


class PrioritySlots:
    """
    :param size: how many actions may hold a slot at once.
    :param clock: an ``IReactorTime`` (``seconds()``) to date waiters and
        holders; wall-clock time when omitted.
    """

    def __init__(self, size, clock=None):
        if size < 1:
            raise ValueError("at least one slot is needed")
        self.size = size
        self.busy = 0
        self.clock = clock if clock is not None else _WallClock()
        # heap of (-priority, arrival, Deferred, info, since)
        self._waiting = []
        self._arrivals = itertools.count()
        self._holders = {}  # arrival -> (priority, info, since), work run() started

    def acquire(self, priority, info=None):
        """
        A Deferred that fires when a slot is ours; cancelling gives up the
        place.  ``info`` labels the waiter in :meth:`snapshot`.
        """
        if self.busy < self.size and not self._live_waiters():
            self.busy += 1
            return defer.succeed(None)
        d = defer.Deferred(lambda d: None)  # cancelled waiters are skipped in release
        heapq.heappush(self._waiting, (-priority, next(self._arrivals), d, info,
                                       self.clock.seconds()))
        return d

    def release(self):
        """Give a slot back: it goes to the most urgent live waiter."""
        while self._waiting:
            d = heapq.heappop(self._waiting)[2]
            if not d.called:
                d.callback(None)
                return
        self.busy -= 1

    def _live_waiters(self):
        # (The heap is empty whenever a slot is free, the only time this
        # runs, so the loop never iterates: make mutate's index changes in
        # it are equivalent.)
        while self._waiting and self._waiting[0][2].called:
            heapq.heappop(self._waiting)
        return bool(self._waiting)

    def run(self, priority, work, info=None):
        """
        Run ``work()`` (returning a Deferred) in a slot; cancellable
        throughout.  ``info`` labels it in :meth:`snapshot`, while it waits
        and while it holds its slot.
        """
        token = next(self._arrivals)

        def start(_):
            self._holders[token] = (priority, info, self.clock.seconds())
            d = defer.maybeDeferred(work)

            def done(result):
                self._holders.pop(token, None)
                self.release()
                return result

            return d.addBoth(done)

        return self.acquire(priority, info).addCallback(start)

    @property
    def waiting(self):
        """How many live (not cancelled) waiters there are."""
        return sum(1 for entry in self._waiting if not entry[2].called)

    def snapshot(self):
        """
        The state of the slots as plain data::

            {"size", "busy",
             "holding": [{**info, "priority", "since"}],   # run() work in a slot
             "queue": [{**info, "priority", "since", "seq", "position"}]}

        ``queue`` lists the live waiters in the order they will be served
        (most urgent first, then by arrival; ``seq`` is the arrival number,
        ``position`` the place in the queue, from 1);
        cancelled waiters are left out.  ``since`` is when each started to
        wait or got its slot, in the clock's seconds.
        """
        live = sorted(e for e in self._waiting if not e[2].called)  # heap order -> serve order
        queue = [dict(_label(info), priority=-neg, since=since, seq=seq, position=position)
                 for position, (neg, seq, _, info, since) in enumerate(live, 1)]
        holding = [dict(_label(info), priority=priority, since=since)
                   for _, (priority, info, since) in sorted(self._holders.items())]
        return {"size": self.size, "busy": self.busy, "holding": holding, "queue": queue}


def _label(info):
    if info is None:
        return {}
    if isinstance(info, dict):
        return dict(info)
    return {"label": str(info)}
