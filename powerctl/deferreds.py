"""
Small Deferred helpers shared by the region, the pserv and the CLI.
"""

from twisted.internet import defer


def when_fired(d):
    """
    A new Deferred that fires with ``None`` once ``d`` fires, whatever its
    result, leaving ``d``'s own result to its callbacks.

    Waiting on ``d`` directly would chain into it: the waiter would take
    (and could swallow or alter) ``d``'s result, which belongs to ``d``'s
    owner.  Cancelling the returned Deferred (a timeout on the wait) gives
    up the wait only; ``d`` is left running.
    """
    waiter = defer.Deferred()

    def notify(result):
        if not waiter.called:  # not once the wait was given up (cancelled)
            waiter.callback(None)
        return result

    d.addBoth(notify)
    return waiter
