"""
Issue 14 (replay): the lock-out guard proves shared credentials at the
device's first answer, not at the end of a whole verified action.

One Redfish service (or PDU) serves many nodes with one account.  While
its credentials are unproven at most ``limit`` attempts may run; the rest
wait.  They used to wait for one attempt to *end* -- a verified power-on:
query, command, polling until the state shows, a second or more -- so a
pserv taking back 1,000 power-ons spread over 100 services held most of
its action slots idle behind those waits (36 of 64 busy on average against
59 for the bare driver).  The first query answered proves the credentials
as well; the waiting attempts go then.  On a Clock, no sockets.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.base import VerifyingDriver
from powerctl.drivers.errors import AuthenticationError
from powerctl.drivers.interface import Timing
from powerctl.power import PowerState
from powerctl.pserv.lockout import GuardedDriver, LockoutGuard

#: the device's answer time and switching time (the bench's simulators: 0.2 s)
ANSWER, SWITCH = 0.01, 0.2


class Device(VerifyingDriver):
    """A system of a shared service: answers after ANSWER, switches in SWITCH."""

    def __init__(self, clock, calls, refuse=False):
        super().__init__(clock, Timing(timeout=5.0, retries=0, poll_interval=1.0,
                                       verify_timeout=10.0))
        self.state = PowerState.OFF
        self.calls = calls
        self.refuse = refuse

    def _answer(self, value):
        def answer():
            if self.refuse:
                raise AuthenticationError("401: wrong password")
            return value() if callable(value) else value

        return task.deferLater(self.clock, ANSWER, answer)

    def read_state(self):
        self.calls.append("query")
        return self._answer(lambda: self.state)

    def send(self, command):
        self.calls.append(command.value)

        def switch():
            self.state = PowerState.ON

        def accepted():
            self.clock.callLater(SWITCH, switch)

        return self._answer(accepted)


class EarlyProofTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.guard = LockoutGuard(self.clock, limit=3, window=300.0)
        self.calls = []

    def drivers(self, count, refuse=False):
        devices = [Device(self.clock, self.calls, refuse) for _ in range(count)]
        return devices, [GuardedDriver(d, self.guard, "service-1 account u") for d in devices]

    def test_waiting_power_ons_start_at_the_first_answer(self):
        devices, guarded = self.drivers(10)
        results = [d.on() for d in guarded]
        self.assertEqual(self.calls.count("query"), 3)  # unproven: three at once
        self.clock.advance(ANSWER)
        # The first queries answered: proven; the seven waiting power-ons
        # start now -- before, they waited for a whole verified power-on
        # (a poll interval at least).
        self.assertEqual(self.calls.count("query"), 10)
        self.assertTrue(self.guard.proven("service-1 account u"))
        self.clock.pump([0.05] * 60)
        got = [self.successResultOf(d) for d in results]
        self.assertEqual(got, [PowerState.ON] * 10)
        self.assertEqual(self.calls.count("on"), 10)
        # the hook lives for an attempt only: nothing kept per driver
        self.assertEqual([d.accepted for d in devices], [None] * 10)

    def test_refused_credentials_still_reach_the_device_at_most_limit_times(self):
        devices, guarded = self.drivers(10, refuse=True)
        results = [d.on() for d in guarded]
        self.clock.pump([0.05] * 60)
        for d in results:
            self.failureResultOf(d, AuthenticationError)
        self.assertEqual(self.calls, ["query"] * 3)  # then locked: nothing more sent
        self.assertFalse(self.guard.proven("service-1 account u"))
        self.assertEqual([d.accepted for d in devices], [None] * 10)

    def test_proven_credentials_cost_nothing_per_call(self):
        devices, guarded = self.drivers(2)
        first = guarded[0].on()
        self.clock.pump([0.05] * 60)
        self.successResultOf(first)
        second = guarded[1].query()
        # proven: the attempt is the driver's own call, no hook is set
        self.assertIsNone(devices[1].__dict__.get("accepted"))
        self.clock.advance(ANSWER)
        self.assertEqual(self.successResultOf(second), PowerState.OFF)

    def test_a_cancelled_attempt_leaves_no_hook(self):
        devices, guarded = self.drivers(1)
        d = guarded[0].on()
        self.assertIsNotNone(devices[0].accepted)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertIsNone(devices[0].accepted)
        self.assertEqual(self.clock.getDelayedCalls(), [])
