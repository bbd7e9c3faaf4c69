"""
The process around a ``powerctl`` command (``task.react``'s main function),
with a Clock for a reactor: the command's status is the exit status; a
signal interrupts the command and waits for it, at most
``SHUTDOWN_GRACE`` seconds, then exits 130.
"""

import io

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.cli import EXIT_INTERRUPTED, Context
from powerctl.cli import main as cli_main


class Reactor(task.Clock):
    """What :func:`powerctl.cli.main.command` asks of a reactor, in memory."""

    def __init__(self):
        super().__init__()
        self.when_running = []
        self.before_shutdown = []

    def callWhenRunning(self, f, *args):
        self.when_running.append(lambda: f(*args))

    def addSystemEventTrigger(self, phase, event, f):
        assert (phase, event) == ("before", "shutdown")
        self.before_shutdown.append(f)

    def run(self):
        for f in self.when_running:
            f()

    def shut_down(self):
        """The before-shutdown triggers' results, as a signal would fire them."""
        return [f() for f in self.before_shutdown]


class CommandTests(unittest.TestCase):
    def setUp(self):
        self.reactor = Reactor()
        self.running = defer.Deferred()  # the command: fires with its status
        self.patch(cli_main, "run", lambda argv, reactor, ctx: self.running)
        self.ctx = Context(self.reactor, stdout=io.StringIO(), stderr=io.StringIO())
        self.exit = cli_main.command(self.reactor, ["anything"], self.ctx)

    def status(self):
        return self.failureResultOf(self.exit, SystemExit).value.code

    def test_the_commands_status_is_the_exit_status(self):
        self.reactor.run()
        self.assertNoResult(self.exit)
        self.running.callback(4)
        self.assertEqual(self.status(), 4)
        self.assertEqual(self.reactor.shut_down(), [None])  # nothing left to wait for

    def test_a_signal_interrupts_the_command_and_waits_for_it(self):
        self.reactor.run()
        [waiting] = self.reactor.shut_down()
        self.assertTrue(self.ctx.interrupted)
        self.assertNoResult(waiting)
        self.running.callback(0)
        self.successResultOf(waiting)
        self.assertEqual(self.status(), 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_command_that_does_not_stop_in_time_exits_130(self):
        self.reactor.run()
        [waiting] = self.reactor.shut_down()
        self.reactor.advance(cli_main.SHUTDOWN_GRACE)
        self.successResultOf(waiting)
        self.assertEqual(self.status(), EXIT_INTERRUPTED)
        self.running.callback(0)  # too late: ignored, not an AlreadyCalledError
