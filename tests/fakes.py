"""
Test doubles that stand in for I/O: a fake executor for the registry.

The registry does no I/O by design, so replacing the executor is not
mocking the product -- it is the seam the product is built around.
"""

from twisted.internet import defer
from zope.interface import implementer

from powerctl.registry import IActionExecutor


@implementer(IActionExecutor)
class FakeExecutor:
    """
    Records every execution and lets the test finish, fail or quiesce them
    by operation id.  ``auto_quiesce=False`` makes ``quiesced`` wait for
    :meth:`quiesce`.
    """

    def __init__(self, auto_quiesce=True):
        self.auto_quiesce = auto_quiesce
        self.started = []  # actions, in the order they started
        self.running = {}  # operation id -> Deferred still unfired
        self.cancelled = []  # operation ids whose execution was cancelled
        self.quiet = {}  # operation id -> Deferred returned by quiesced()

    def execute(self, action):
        op = action.operation_id

        def cancel(d):
            self.cancelled.append(op)
            self.running.pop(op, None)

        d = defer.Deferred(cancel)
        self.started.append(action)
        self.running[op] = d
        return d

    def quiesced(self, action):
        if self.auto_quiesce:
            return defer.succeed(None)
        d = self.quiet[action.operation_id] = defer.Deferred()
        return d

    def finish(self, op, result):
        self.running.pop(op).callback(result)

    def fail(self, op, exc):
        self.running.pop(op).errback(exc)

    def quiesce(self, op):
        self.quiet.pop(op).callback(None)

    def started_ops(self):
        return [a.operation_id for a in self.started]
