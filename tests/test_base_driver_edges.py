"""
The verifying driver base at its bounds: exactly ``retries`` retries with
doubling, capped backoff; verification gives up at ``verify_timeout`` and
not a poll later; graceful shutdown only where the agent has it, and its
fall-back to a hard off (each found by mutation testing, ``make mutate``).
"""

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from powerctl.drivers.base import Command, VerifyingDriver
from powerctl.drivers.errors import PowerTimeout, UnreachableError, UnsupportedError
from powerctl.drivers.interface import Capabilities, IPowerDriver, Timing
from powerctl.power import PowerState

ON, OFF = PowerState.ON, PowerState.OFF


class Device(VerifyingDriver):
    """Scripted: ``unreachable`` failures first; commands take ``delay`` s;
    ``ignores_soft_off`` makes a graceful shutdown do nothing."""

    def __init__(self, clock, timing, state=ON, unreachable=0, delay=0.0,
                 ignores_soft_off=False, soft_off=True):
        super().__init__(clock, timing)
        self.capabilities = Capabilities(soft_off=soft_off)
        self.state = state
        self.unreachable = unreachable
        self.delay = delay
        self.ignores_soft_off = ignores_soft_off
        self.sent = []
        self.call_times = []

    def read_state(self):
        self.call_times.append(self.clock.seconds())
        if self.unreachable:
            self.unreachable -= 1
            return defer.fail(UnreachableError("no route"))
        return defer.succeed(self.state)

    def send(self, command):
        self.sent.append(command)
        if not (command is Command.SOFT_OFF and self.ignores_soft_off):
            target = ON if command is Command.ON else OFF
            self.clock.callLater(self.delay, setattr, self, "state", target)
        return defer.succeed(None)


class RetryBoundsTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_gives_up_after_exactly_retries_retries(self):
        timing = Timing(timeout=1.0, retries=2, backoff=0.5)
        device = Device(self.clock, timing, unreachable=10)
        d = device.query()
        self.clock.pump([0.25] * 40)
        self.failureResultOf(d, UnreachableError)
        self.assertEqual(len(device.call_times), 3)  # the call and two retries

    def test_no_retries_means_one_call(self):
        device = Device(self.clock, Timing(retries=0), unreachable=1)
        self.failureResultOf(device.query(), UnreachableError)
        self.assertEqual(len(device.call_times), 1)

    def test_backoff_doubles_up_to_its_cap(self):
        timing = Timing(timeout=1.0, retries=4, backoff=0.5, backoff_max=1.5)
        device = Device(self.clock, timing, state=OFF, unreachable=4)
        d = device.query()
        self.clock.pump([0.25] * 40)
        self.assertEqual(self.successResultOf(d), OFF)
        # waits 0.5, 1.0, then capped at 1.5, 1.5
        self.assertEqual(device.call_times, [0.0, 0.5, 1.5, 3.0, 4.5])


class VerificationBoundTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_verification_fails_at_verify_timeout_not_a_poll_later(self):
        timing = Timing(verify_timeout=5.0, poll_interval=0.25)
        # The host would go off just after the bound: too late.
        device = Device(self.clock, timing, state=ON, delay=5.1)
        d = device.off()
        self.clock.pump([0.25] * 20)  # t = 5.0
        self.failureResultOf(d, PowerTimeout)
        self.assertEqual(device.sent, [Command.OFF])

    def test_provides_the_driver_interface(self):
        device = Device(self.clock, Timing())
        self.assertTrue(verifyObject(IPowerDriver, device))


class SoftOffTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.timing = Timing(verify_timeout=5.0, poll_interval=0.25, soft_off_timeout=2.0)

    def test_soft_off_where_unsupported_is_refused_without_touching_the_host(self):
        device = Device(self.clock, self.timing, soft_off=False)
        self.failureResultOf(device.soft_off(), UnsupportedError)
        self.assertEqual((device.sent, device.call_times), ([], []))

    def test_soft_off_shuts_down_gracefully(self):
        device = Device(self.clock, self.timing, delay=1.0)
        d = device.soft_off()
        self.clock.pump([0.25] * 8)
        self.assertEqual(self.successResultOf(d), OFF)
        self.assertEqual(device.sent, [Command.SOFT_OFF])

    def test_soft_off_of_a_host_already_off_sends_nothing(self):
        device = Device(self.clock, self.timing, state=OFF)
        self.assertEqual(self.successResultOf(device.soft_off()), OFF)
        self.assertEqual(device.sent, [])

    def test_an_ignored_soft_off_falls_back_to_a_hard_off(self):
        device = Device(self.clock, self.timing, ignores_soft_off=True)
        d = device.soft_off()
        self.clock.pump([0.25] * 8)  # soft_off_timeout passes
        self.assertNoResult(d)  # now hard off, being verified
        self.clock.pump([0.25] * 4)
        self.assertEqual(self.successResultOf(d), OFF)
        self.assertEqual(device.sent, [Command.SOFT_OFF, Command.OFF])
