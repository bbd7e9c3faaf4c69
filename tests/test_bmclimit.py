"""
Pacing (powerctl.drivers.bmclimit) with a Clock: holders at once, spacing
between starts, cancellation, and the per-BMC limiter in the verifying
driver base (every call takes a slot of its device).
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.bmclimit import (
    BmcLimiter, BmcLimits, Pacer, address_of, address_of_url)
from powerctl.power import PowerState
from tests.test_base_driver import ScriptedDriver

ON, OFF = PowerState.ON, PowerState.OFF


class PacerTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def starts(self, pacer, n):
        """Acquire n times; record when each caller got its slot."""
        got = []
        ds = []
        for i in range(n):
            d = pacer.acquire()
            d.addCallback(lambda release, i=i: got.append((i, self.clock.seconds(), release)))
            ds.append(d)
        return got, ds

    def test_at_most_n_holders(self):
        pacer = Pacer(self.clock, max_at_once=2)
        got, _ = self.starts(pacer, 5)
        self.assertEqual([g[0] for g in got], [0, 1])
        self.assertEqual((pacer.in_use, pacer.waiting), (2, 3))
        got[0][2]()
        self.assertEqual([g[0] for g in got], [0, 1, 2])
        got[0][2]()  # releasing twice is harmless
        self.assertEqual(pacer.in_use, 2)
        for g in list(got):
            g[2]()
        self.assertEqual([g[0] for g in got], [0, 1, 2, 3, 4])
        for g in got:
            g[2]()
        self.assertEqual((pacer.in_use, pacer.waiting), (0, 0))

    def test_starts_are_spaced_two_seconds(self):
        pacer = Pacer(self.clock, max_at_once=None, spacing=2.0)
        got, _ = self.starts(pacer, 4)
        self.assertEqual([t for _, t, _ in got], [0.0])
        self.clock.pump([0.5] * 12)
        self.assertEqual([t for _, t, _ in got], [0.0, 2.0, 4.0, 6.0])
        self.assertFalse(self.clock.getDelayedCalls())

    def test_budget_of_4_with_2s_spacing_holds_for_48(self):
        """48 power-ons, each held 9 s: never more than 4 at once, starts >= 2 s apart."""
        pacer = Pacer(self.clock, max_at_once=4, spacing=2.0)
        held, starts, peak = [0], [], [0]

        def started(release):
            starts.append(self.clock.seconds())
            held[0] += 1
            peak[0] = max(peak[0], held[0])

            def done():
                held[0] -= 1
                release()

            self.clock.callLater(9.0, done)

        for _ in range(48):
            pacer.acquire().addCallback(started)
        while len(starts) < 48 or held[0]:
            self.clock.advance(0.1)
        self.assertEqual(peak[0], 4)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        self.assertGreaterEqual(min(gaps), 2.0 - 1e-9)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_cancelled_waiter_leaves_no_trace(self):
        pacer = Pacer(self.clock, max_at_once=1, spacing=1.0)
        got, ds = self.starts(pacer, 3)
        ds[1].cancel()
        self.failureResultOf(ds[1], defer.CancelledError)
        got[0][2]()
        self.clock.advance(1.0)
        self.assertEqual([g[0] for g in got], [0, 2])
        ds2 = pacer.acquire()
        ds2.cancel()
        self.failureResultOf(ds2, defer.CancelledError)
        got[1][2]()
        self.clock.advance(5)
        self.assertEqual((pacer.in_use, pacer.waiting), (0, 0))
        self.assertFalse(self.clock.getDelayedCalls())

    def test_cancelling_the_only_waiter_stops_the_timer(self):
        pacer = Pacer(self.clock, spacing=3.0)
        got, _ = self.starts(pacer, 1)
        d = pacer.acquire()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_reconfigure_serves_waiters_under_the_new_budget(self):
        pacer = Pacer(self.clock, max_at_once=1)
        got, _ = self.starts(pacer, 3)
        self.assertEqual(len(got), 1)
        pacer.reconfigure(3, 0)
        self.assertEqual(len(got), 3)

    def test_a_holder_releasing_at_once_lets_the_next_start(self):
        pacer = Pacer(self.clock, max_at_once=1)
        order = []
        for i in range(3):
            pacer.acquire().addCallback(lambda release, i=i: (order.append(i), release()))
        self.assertEqual(order, [0, 1, 2])
        self.assertEqual(pacer.in_use, 0)


class LimiterTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_limits_are_per_address(self):
        limiter = BmcLimiter(self.clock, BmcLimits(max_sessions=2, min_interval=0.5))
        a = [limiter.acquire("10.0.0.1:443") for _ in range(3)]
        b = [limiter.acquire("10.0.0.2:443") for _ in range(2)]
        self.assertEqual([d.called for d in a], [True, False, False])
        self.assertEqual([d.called for d in b], [True, False])
        self.clock.advance(0.5)
        self.assertEqual([d.called for d in a], [True, True, False])
        self.assertTrue(b[1].called)
        self.clock.advance(0.5)
        self.assertFalse(a[2].called)  # two sessions already
        self.successResultOf(a[0])()
        self.assertTrue(a[2].called)

    def test_limits_are_checked(self):
        self.assertRaises(ValueError, BmcLimits, 0, 0.0)
        self.assertRaises(ValueError, BmcLimits, 8, -1.0)
        self.assertRaises(ValueError, BmcLimits, True, 0.0)

    def test_addresses(self):
        self.assertEqual(address_of("10.0.0.5", 623), "10.0.0.5:623")
        self.assertEqual(address_of("fe80::1", 161), "[fe80::1]:161")
        self.assertEqual(address_of_url("https://bmc.example/redfish/v1"), "bmc.example:443")
        self.assertEqual(address_of_url("http://127.0.0.1:8000/x"), "127.0.0.1:8000")

    def test_idle_pacers_are_swept(self):
        limiter = BmcLimiter(self.clock, BmcLimits(max_sessions=1))
        for i in range(100):
            self.successResultOf(limiter.acquire(f"h{i}:1"))()
        limiter.acquire("last:1")
        self.assertLess(len(limiter._pacers), 64)

    def test_sweeping_costs_little_per_call_with_many_devices_busy(self):
        """
        64 actions in flight hold 64 devices: every further call used to walk
        every pacer (a sweep per call past 64); now a walk only once the table
        doubled, and the table stays within twice the devices in use.
        """
        checks = []

        class Counted(Pacer):
            def idle(self):
                checks.append(1)
                return super().idle()

        limiter = BmcLimiter(self.clock, BmcLimits(max_sessions=8))
        import powerctl.drivers.bmclimit as bmclimit
        self.patch(bmclimit, "Pacer", Counted)
        held = [self.successResultOf(limiter.acquire(f"busy{i}:623")) for i in range(64)]
        calls = 2000
        for i in range(calls):
            self.successResultOf(limiter.acquire(f"h{i % 500}:623"))()
            self.assertLessEqual(len(limiter._pacers), 2 * (64 + 1) + 2)
        self.assertLess(len(checks), 4 * calls)  # was 64 or more per call
        for release in held:
            release()


class DriverUnderLimitTests(unittest.TestCase):
    """The verifying base takes a slot of its device for every call."""

    def setUp(self):
        self.clock = task.Clock()

    def test_one_session_at_a_time_and_spaced(self):
        limiter = BmcLimiter(self.clock, BmcLimits(max_sessions=1, min_interval=1.0))
        drivers = [ScriptedDriver(self.clock, state=ON) for _ in range(3)]
        for d in drivers:
            d.bmc = limiter.handle("pdu:161")
        queries = [d.query() for d in drivers]
        self.assertEqual([q.called for q in queries], [True, False, False])
        self.clock.advance(1.0)
        self.assertEqual([q.called for q in queries], [True, True, False])
        self.clock.advance(1.0)
        self.assertEqual([self.successResultOf(q) for q in queries], [ON, ON, ON])

    def test_waiting_for_a_slot_is_not_a_timeout(self):
        limiter = BmcLimiter(self.clock, BmcLimits(max_sessions=1, min_interval=3.0))
        a, b = ScriptedDriver(self.clock, state=ON), ScriptedDriver(self.clock, state=ON)
        a.bmc = b.bmc = limiter.handle("bmc:623")
        self.successResultOf(a.query())
        d = b.query()  # waits 3 s for the interval; the call timeout is 1 s
        self.clock.advance(3.0)
        self.assertEqual(self.successResultOf(d), ON)

    def test_cancel_while_waiting_for_a_slot(self):
        limiter = BmcLimiter(self.clock, BmcLimits(max_sessions=1, min_interval=5.0))
        a, b = ScriptedDriver(self.clock, state=ON), ScriptedDriver(self.clock, state=ON)
        a.bmc = b.bmc = limiter.handle("bmc:623")
        self.successResultOf(a.query())
        d = b.query()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(limiter.pacer("bmc:623").waiting, 0)
        self.assertEqual(b.calls, 0)
