"""
The ``ipmi`` driver's keeping policy for idle sessions, alone: keys and
times in, keys to log out out (no sockets, no clock of any kind).
"""

from twisted.trial import unittest

from powerctl.drivers.ipmi_sessions import IdleSessions


class IdleSessionsTests(unittest.TestCase):
    def test_within_bounds_nothing_is_dropped(self):
        idle = IdleSessions(max_sessions=3, max_idle=20)
        for n, key in enumerate("abc"):
            self.assertEqual(idle.idle(key, n), [])
        self.assertEqual(len(idle), 3)
        self.assertEqual(idle.expired(19.9), [])

    def test_least_recently_used_dropped_over_the_bound(self):
        idle = IdleSessions(max_sessions=2, max_idle=20)
        idle.idle("a", 0)
        idle.idle("b", 1)
        idle.idle("a", 2)  # a used again: b is now the least recent
        self.assertEqual(idle.idle("c", 3), ["b"])
        self.assertNotIn("b", idle)
        self.assertEqual(idle.idle("d", 4), ["a"])
        self.assertEqual(len(idle), 2)

    def test_bound_zero_keeps_nothing(self):
        idle = IdleSessions(max_sessions=0, max_idle=20)
        self.assertEqual(idle.idle("a", 0), ["a"])
        self.assertEqual(len(idle), 0)
        self.assertIsNone(idle.next_expiry())

    def test_no_bound(self):
        idle = IdleSessions(max_sessions=None, max_idle=20)
        for n in range(5000):
            self.assertEqual(idle.idle(n, 0), [])
        self.assertEqual(len(idle), 5000)

    def test_negative_bound_refused(self):
        self.assertRaises(ValueError, IdleSessions, -1, 20)

    def test_expiry_at_max_idle_to_the_tick(self):
        idle = IdleSessions(max_sessions=10, max_idle=20)
        idle.idle("a", 0)
        idle.idle("b", 5)
        self.assertEqual(idle.next_expiry(), 20)
        self.assertEqual(idle.expired(19.999), [])
        self.assertEqual(idle.expired(20), ["a"])
        self.assertEqual(idle.next_expiry(), 25)
        self.assertEqual(idle.expired(100), ["b"])
        self.assertIsNone(idle.next_expiry())

    def test_reuse_restarts_the_idle_time(self):
        idle = IdleSessions(max_sessions=10, max_idle=20)
        idle.idle("a", 0)
        idle.idle("b", 1)
        idle.idle("a", 15)
        self.assertEqual(idle.next_expiry(), 21)  # b's, now the oldest
        self.assertEqual(idle.expired(34.9), ["b"])
        self.assertEqual(idle.expired(35), ["a"])

    def test_busy_is_never_chosen(self):
        idle = IdleSessions(max_sessions=1, max_idle=20)
        idle.idle("a", 0)
        idle.busy("a")  # a call took it
        self.assertEqual(idle.idle("b", 1), [])  # a is not idle: nothing over the bound
        self.assertEqual(idle.expired(100), ["b"])
        idle.busy("never seen")  # harmless
