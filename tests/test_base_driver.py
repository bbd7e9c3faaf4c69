"""
The verifying base of every protocol driver, with a Clock and a scripted
device: verification, retries with backoff, and prompt cancellation.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.base import Command, VerifyingDriver
from powerctl.drivers.errors import AuthenticationError, PowerTimeout, UnreachableError
from powerctl.drivers.interface import Timing
from powerctl.power import PowerState

ON, OFF = PowerState.ON, PowerState.OFF


class ScriptedDriver(VerifyingDriver):
    """A device whose state flips ``delay`` seconds after a command."""

    def __init__(self, clock, state=OFF, delay=0.0, failures=(), hang=False):
        super().__init__(clock, Timing(timeout=1.0, retries=2, backoff=0.5,
                                       verify_timeout=5.0, poll_interval=0.25))
        self.state = state
        self.delay = delay
        self.failures = list(failures)  # exceptions raised by the next calls
        self.hang = hang
        self.sent = []
        self.calls = 0

    def _maybe_fail(self):
        self.calls += 1
        if self.hang:
            # A protocol layer that answers its own cancellation with a
            # transient timeout (as bridged asyncio libraries may).
            return defer.Deferred(lambda d: d.errback(PowerTimeout("cancelled")))
        if self.failures:
            return defer.fail(self.failures.pop(0))
        return None

    def read_state(self):
        return self._maybe_fail() or defer.succeed(self.state)

    def send(self, command):
        failed = self._maybe_fail()
        if failed:
            return failed
        self.sent.append(command)
        target = ON if command is Command.ON else OFF
        self.clock.callLater(self.delay, setattr, self, "state", target)
        return defer.succeed(None)


class VerifyingDriverTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_on_waits_until_verified(self):
        driver = ScriptedDriver(self.clock, delay=1.0)
        d = driver.on()
        self.assertNoResult(d)
        self.clock.pump([0.25] * 8)
        self.assertEqual(self.successResultOf(d), ON)
        self.assertEqual(driver.sent, [Command.ON])

    def test_on_leaves_a_running_host_alone(self):
        driver = ScriptedDriver(self.clock, state=ON)
        self.assertEqual(self.successResultOf(driver.on()), ON)
        self.assertEqual(driver.sent, [])

    def test_cycle_is_off_then_on(self):
        driver = ScriptedDriver(self.clock, state=ON)
        d = driver.cycle()
        self.clock.pump([0.25] * 4)
        self.assertEqual(self.successResultOf(d), ON)
        self.assertEqual(driver.sent, [Command.OFF, Command.ON])

    def test_transient_failures_are_retried_with_backoff(self):
        driver = ScriptedDriver(self.clock, failures=[UnreachableError("x"), UnreachableError("y")])
        d = driver.query()
        self.clock.advance(0.5)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), OFF)
        self.assertEqual(driver.calls, 3)

    def test_permanent_failures_are_not(self):
        driver = ScriptedDriver(self.clock, failures=[AuthenticationError("no")])
        self.failureResultOf(driver.query(), AuthenticationError)
        self.assertEqual(driver.calls, 1)

    def test_state_not_reached_is_a_timeout(self):
        driver = ScriptedDriver(self.clock, state=ON, delay=100)
        d = driver.off()
        self.clock.pump([0.25] * 30)
        self.failureResultOf(d, PowerTimeout)

    def test_cancel_is_prompt_even_if_the_protocol_answers_with_a_timeout(self):
        driver = ScriptedDriver(self.clock, hang=True)
        d = driver.on()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(driver.calls, 1)  # not retried
        self.assertEqual(self.clock.getDelayedCalls(), [])
