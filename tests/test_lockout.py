"""
Issue 10, no BMC lock-outs: the guard's decisions on a Clock, the guarded
driver, and the Redfish simulator with a wrong password: however many
operations are requested, at most ``auth_failure_limit`` failed logins
reach it.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.errors import AuthenticationError, PowerTimeout
from powerctl.pserv.lockout import GuardedDriver, LockoutGuard, credentials_key
from tests.pg import DatabaseMixin
from tests.system import SystemMixin


class GuardTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.guard = LockoutGuard(self.clock, limit=3, window=300.0)

    def attempt(self, key, outcome):
        self.assertIsNone(self.guard.refusal(key))
        self.guard.started(key)
        self.guard.ended(key, outcome)

    def test_stops_after_the_limit_within_the_window(self):
        for _ in range(3):
            self.attempt("k", "auth")
        self.assertIn("credentials rejected", self.guard.refusal("k"))
        self.assertIsNone(self.guard.refusal("other"))  # per account
        self.clock.advance(299)
        self.assertIsNotNone(self.guard.refusal("k"))
        self.clock.advance(2)
        self.assertIsNone(self.guard.refusal("k"))

    def test_success_and_other_failures(self):
        self.attempt("k", "auth")
        self.attempt("k", "other")  # a timeout says nothing about credentials
        self.assertEqual(self.guard.failures("k"), 1)
        self.attempt("k", "ok")
        self.assertEqual(self.guard.failures("k"), 0)

    def test_unproven_credentials_are_not_tried_more_at_once_than_may_fail(self):
        for _ in range(3):
            self.assertIsNone(self.guard.refusal("k"))
            self.guard.started("k")
        self.assertIn("in flight", self.guard.refusal("k"))
        self.guard.ended("k", "ok")  # proven: run freely
        for _ in range(5):
            self.assertIsNone(self.guard.refusal("k"))
            self.guard.started("k")

    def test_the_key_changes_with_the_credentials_and_hides_them(self):
        a = credentials_key("ipmi", {"host": "h", "username": "u", "password": "p1"},
                            {"password"})
        b = credentials_key("ipmi", {"host": "h", "username": "u", "password": "p2"},
                            {"password"})
        self.assertNotEqual(a, b)
        self.assertNotIn("p1", a)
        self.assertEqual(a, credentials_key("ipmi", {"host": "h", "username": "u",
                                                     "password": "p1", "timeout": 3},
                                            {"password"}))


class FakeDriver:
    capabilities = None

    def __init__(self, error=None):
        self.calls = 0
        self.error = error
        self.pending = []

    def query(self):
        self.calls += 1
        if self.error is None:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        return defer.fail(self.error)

    def quiesced(self):
        return defer.succeed(None)


class GuardedDriverTests(unittest.TestCase):
    def test_at_most_the_limit_of_refused_logins_reach_the_device(self):
        guard = LockoutGuard(task.Clock(), limit=3)
        fake = FakeDriver(AuthenticationError("bad password"))
        driver = GuardedDriver(fake, guard, "k")
        errors = []
        for _ in range(10):
            driver.query().addErrback(lambda f: errors.append(f.trap(AuthenticationError)
                                                              and f.getErrorMessage()))
        self.assertEqual(fake.calls, 3)
        self.assertEqual(len(errors), 10)
        self.assertIn("credentials rejected", errors[-1])
        other = FakeDriver(PowerTimeout("slow"))
        GuardedDriver(other, guard, "k2").query().addErrback(lambda f: None)
        self.assertEqual(guard.failures("k2"), 0)

    def test_concurrent_attempts_with_unproven_credentials_are_bounded(self):
        guard = LockoutGuard(task.Clock(), limit=3)
        fake = FakeDriver()
        driver = GuardedDriver(fake, guard, "k")
        results = [driver.query() for _ in range(5)]
        self.assertEqual(fake.calls, 3)
        for d in results[3:]:
            self.failureResultOf(d, AuthenticationError)
        for d in fake.pending:
            d.errback(AuthenticationError("no"))
        for d in results[:3]:
            self.failureResultOf(d, AuthenticationError)
        self.failureResultOf(driver.query(), AuthenticationError)
        self.assertEqual(fake.calls, 3)


class RedfishLockoutTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    nodes = ("node1",)
    async def test_a_wrong_password_reaches_the_bmc_at_most_three_times(self):
        refused = []
        valid = self.sim._valid

        def counting(user, password):
            ok = valid(user, password)
            if not ok:
                refused.append(user)
            return ok

        self.sim._valid = counting
        await self.start_region()
        await self.start_pserv()
        await self.add_node("node1", power=self.redfish_power("node1", password="wrong"))
        ops = []
        for action in ("on", "off", "cycle", "on", "query", "off", "on"):
            op = await self.power("node1", action)
            ops.append(await self.wait_op(op["id"]))
        self.assertEqual({o["state"] for o in ops}, {"failed"}, ops)
        self.assertLessEqual(len(refused), 3, refused)
        self.assertGreaterEqual(len(refused), 1)
        self.assertIn("credentials rejected", ops[-1]["error"])
        # new credentials: tried again at once
        code, _ = await self.call("PUT", "/v1/nodes/node1",
                                  {"power": self.redfish_power("node1")})
        self.assertEqual(code, 200)
        op = await self.power("node1", "on")
        self.assertEqual((await self.wait_op(op["id"]))["state"], "succeeded")


class IpmiLockoutTests(unittest.TestCase):
    """The ipmi driver (pyghmi) against the IPMI simulator, with a wrong password."""

    @defer.inlineCallbacks
    def test_a_wrong_password_reaches_the_bmc_at_most_three_times(self):
        from twisted.internet import reactor

        from powerctl.drivers import ipmi
        from powerctl.sim import ipmi as sim
        from tests.test_ipmi_driver import FAST, PASSWORD, REALISTIC

        bmcs = sim.start(reactor, {"password": PASSWORD, "latency": REALISTIC.latency})
        self.addCleanup(bmcs.stop)
        driver_type = ipmi.IpmiDriverType(reactor, timing=FAST)
        self.addCleanup(driver_type.close)
        params = {"host": "127.0.0.1", "port": bmcs.port, "username": "admin",
                  "password": "wrong", "min_interval": 0}
        guard = LockoutGuard(reactor, limit=3)
        key = credentials_key("ipmi", params, {"password"})
        driver = GuardedDriver(driver_type.bind(driver_type.schema.validate(params)),
                               guard, key)
        bmc = bmcs.bmc()
        attempts = []  # RAKP message 1: a login attempt with the user's password
        rakp1 = bmc._rakp1
        bmc._rakp1 = lambda payload, address: (attempts.append(1), rakp1(payload, address))
        for _ in range(6):
            with self.assertRaises(AuthenticationError):
                yield driver.query()
        self.assertGreaterEqual(len(attempts), 1)
        self.assertLessEqual(len(attempts), 3)
