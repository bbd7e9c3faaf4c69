"""
Issue 10, no BMC lock-outs: the guard's decisions on a Clock, the guarded
driver, and the Redfish simulator with a wrong password: however many
operations are requested, at most ``auth_failure_limit`` failed logins
reach it.
"""

import json

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.errors import AuthenticationError, PowerTimeout
from powerctl.pserv.lockout import GuardedDriver, LockoutGuard, credentials_key
from tests.pg import DatabaseMixin
from tests.system import SystemMixin, free_port, wait_until


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
        # Locked out: the window passing does not unlock it (the device may
        # still count), only new credentials or an operator's clearing.
        self.clock.advance(10_000)
        self.assertIn("credentials rejected", self.guard.refusal("k"))

    def test_failures_older_than_the_window_do_not_count(self):
        for _ in range(2):
            self.attempt("k", "auth")
        self.clock.advance(301)
        self.attempt("k", "auth")
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


class RegionHeldLockoutTests(unittest.TestCase):
    """
    Issue 10: a lock-out is reported for every (node, agent) using the
    credentials, held across what the region sends back, and released only
    by the region's clearing or new credentials.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.reported = []
        self.guard = LockoutGuard(self.clock, limit=3, window=300.0,
                                  on_lockout=lambda *a: self.reported.append(a))
        self.guard.register("n1", 0, "k")
        self.guard.register("n2", 0, "k")  # one account, two nodes (a PDU, a chassis)

    def lock(self, key="k"):
        for _ in range(3):
            self.guard.started(key)
            self.guard.ended(key, "auth")

    def test_a_lockout_is_reported_once_per_node_using_the_credentials(self):
        self.lock()
        self.assertEqual([(n, a) for n, a, _, _ in self.reported], [("n1", 0), ("n2", 0)])
        self.assertEqual(self.reported[0][2], 3)
        self.lock()  # more failures (in flight when it locked) report nothing new
        self.assertEqual(len(self.reported), 2)

    def test_a_lockout_from_the_region_is_held_by_a_fresh_guard(self):
        fresh = LockoutGuard(self.clock, limit=3)  # a restarted or the next pserv
        fresh.register("n1", 0, "k")
        self.assertIsNone(fresh.refusal("k"))
        fresh.hold("n1", 0, 7)
        self.assertIn("credentials rejected", fresh.refusal("k"))
        self.clock.advance(10_000)
        self.assertIn("credentials rejected", fresh.refusal("k"))
        fresh.release("n1")
        self.assertIsNone(fresh.refusal("k"))

    def test_every_node_must_be_cleared_before_shared_credentials_are_tried(self):
        self.lock()
        self.guard.acknowledged("n1", 0, 1)
        self.guard.acknowledged("n2", 0, 2)
        self.guard.release("n1")
        self.assertIsNotNone(self.guard.refusal("k"))
        self.guard.release("n2")
        self.assertIsNone(self.guard.refusal("k"))
        self.assertEqual(self.guard.failures("k"), 0)

    def test_new_credentials_are_not_locked_out(self):
        self.guard.register("n2", 0, "other")
        self.lock()
        self.guard.register("n1", 0, "k2")  # n1 got a new password
        self.assertIsNone(self.guard.refusal("k2"))

    def test_a_lockout_found_after_its_node_was_forgotten_is_cleared_with_it(self):
        self.guard.unregister("n1")
        self.guard.unregister("n2")
        self.lock()  # a call in flight when the nodes were forgotten
        self.assertEqual(self.reported, [])
        self.guard.register("n1", 0, "k")
        self.assertIsNotNone(self.guard.refusal("k"))
        self.guard.release("n1")
        self.assertIsNone(self.guard.refusal("k"))

    def test_a_node_s_listing_and_forgetting_touch_that_node_only(self):
        # The guard finds a node's agents through a per-node index (a
        # recovery syncs every node); the other node's hold must stay.
        self.lock()
        self.guard.acknowledged("n1", 0, 1)
        self.guard.acknowledged("n2", 0, 2)
        self.guard.register("n1", 1, "k")  # a second agent of n1, same account
        self.assertEqual(self.guard.held("n2"), {0: 2})
        self.guard.sync("n1", {}, self.guard.generation())  # n1 cleared by the region
        self.assertEqual(self.guard.held("n2"), {0: 2})
        self.assertIsNotNone(self.guard.refusal("k"))
        self.guard.unregister("n1")
        self.assertEqual(self.guard.held("n1"), {})
        self.assertEqual(self.guard.held("n2"), {0: 2})
        self.guard.sync("n2", {}, self.guard.generation())
        self.assertIsNone(self.guard.refusal("k"))

    def test_a_listing_clears_only_what_the_region_had_acknowledged_before_it(self):
        self.guard.register("n2", 0, "other")
        self.lock()
        since = self.guard.generation()
        self.guard.sync("n1", {}, since)  # read before the region recorded it
        self.assertIsNotNone(self.guard.refusal("k"))
        self.guard.acknowledged("n1", 0, 5)
        self.guard.sync("n1", {}, since)  # a listing asked for before the answer
        self.assertIsNotNone(self.guard.refusal("k"))
        self.guard.sync("n1", {0: 5}, self.guard.generation())
        self.assertIsNotNone(self.guard.refusal("k"))
        self.guard.sync("n1", {}, self.guard.generation())  # cleared meanwhile
        self.assertIsNone(self.guard.refusal("k"))


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
            self.assertNoResult(d)  # waiting for the first three to prove or fail
        for d in list(fake.pending):
            d.errback(AuthenticationError("no"))
        for d in results[:3]:
            self.failureResultOf(d, AuthenticationError)
        for d in results[3:]:  # locked: the waiting ones fail without a call
            self.assertIn("credentials rejected",
                          self.failureResultOf(d, AuthenticationError).getErrorMessage())
        self.failureResultOf(driver.query(), AuthenticationError)
        self.assertEqual(fake.calls, 3)

    def test_waiting_attempts_run_once_the_credentials_are_proven(self):
        # One Redfish service (or PDU) serves many nodes with one account:
        # their first power-ons must not fail for want of proven credentials.
        guard = LockoutGuard(task.Clock(), limit=3)
        fake = FakeDriver()
        driver = GuardedDriver(fake, guard, "k")
        results = [driver.query() for _ in range(6)]
        cancelled = results[4]
        cancelled.cancel()
        self.failureResultOf(cancelled, defer.CancelledError)
        self.assertEqual(fake.calls, 3)
        fake.pending[0].callback("on")  # proven: everything waiting runs
        self.assertEqual(fake.calls, 5)  # the cancelled one never calls
        for d in list(fake.pending[1:]):
            d.callback("on")
        for d in results[:4] + results[5:]:
            self.assertEqual(self.successResultOf(d), "on")

    def test_a_non_auth_failure_frees_a_turn_for_a_waiting_attempt(self):
        guard = LockoutGuard(task.Clock(), limit=2)
        fake = FakeDriver()
        driver = GuardedDriver(fake, guard, "k")
        results = [driver.query() for _ in range(3)]
        self.assertEqual(fake.calls, 2)
        fake.pending[0].errback(PowerTimeout("slow"))  # says nothing of credentials
        self.assertEqual(fake.calls, 3)
        self.failureResultOf(results[0], PowerTimeout)
        self.assertNoResult(results[2])


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


class PersistentLockoutTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """
    Issue 10: a lock-out outlives the pserv that found it.  The region
    keeps it and gives it to the next pserv with the node's configuration,
    so a restart or a hand-over never tries the refused credentials again;
    an operator lists and clears it, and the clearing reaches the owner at
    once.
    """

    nodes = ("node1",)

    def count_refusals(self):
        refused = []
        valid = self.sim._valid

        def counting(user, password):
            ok = valid(user, password)
            if not ok:
                refused.append(user)
            return ok

        self.sim._valid = counting
        return refused

    async def lock_out(self, refused):
        for action in ("on", "off", "on", "off"):
            op = await self.power("node1", action)
            await self.wait_op(op["id"])
        self.assertEqual(len(refused), 3, refused)

        async def recorded():
            return await self.get("/v1/lockouts") or None

        return await wait_until(recorded)

    async def test_a_lockout_survives_a_pserv_restart_and_is_cleared_by_an_operator(self):
        refused = self.count_refusals()
        await self.start_region()
        first = await self.start_pserv("pserv-a")
        await self.add_node("node1", power=self.redfish_power("node1", password="wrong"))
        [lockout] = await self.lock_out(refused)
        self.assertEqual((lockout["node"], lockout["cluster"], lockout["agent"],
                          lockout["pserv"]), ("node1", "c1", 0, "pserv-a"))
        self.assertNotIn("wrong", json.dumps(lockout))
        # The pserv stops (its memory goes with it); the next one owns the node.
        await first.stopService()
        second = await self.start_pserv("pserv-b")
        async def connected():
            return second.link.connected or None

        await wait_until(connected)
        for action in ("on", "off", "cycle"):
            op = await self.wait_op((await self.power("node1", action))["id"])
            self.assertEqual(op["state"], "failed")
            self.assertIn("credentials rejected", op["error"])
        self.assertEqual(len(refused), 3, "the next pserv tried locked-out credentials")
        # A viewer may list, not clear; an operator clears (audited).
        code, body = await self.call("DELETE", "/v1/lockouts/node1")
        self.assertEqual(code, 200, body)
        self.assertEqual([c["agent"] for c in body["cleared"]], [0])
        self.assertEqual(await self.get("/v1/lockouts"), [])
        audit = await self.get("/v1/audit?limit=5")
        self.assertIn(("DELETE", "/v1/lockouts/node1", 200),
                      [(a["method"], a["path"], a["status"]) for a in audit])
        # Cleared at once on the owner: the credentials are tried again.
        op = await self.wait_op((await self.power("node1", "on"))["id"])
        self.assertEqual(op["state"], "failed")
        self.assertEqual(len(refused), 4)
        self.assertNotIn("credentials rejected", op["error"])

    async def test_a_clearing_through_another_region_reaches_the_owner(self):
        """The owner is connected to region one only; the clearing is made on region two."""
        refused = self.count_refusals()
        await self.start_region()
        port = free_port()
        other = await self.start_region("region-two", f"tcp:{port}:interface=127.0.0.1",
                                        main=False)
        await self.start_pserv("pserv-a")  # dials region one only
        await self.add_node("node1", power=self.redfish_power("node1", password="wrong"))
        await self.lock_out(refused)
        code, body = await self.call("DELETE", "/v1/lockouts/node1", api=other.api)
        self.assertEqual((code, len(body["cleared"])), (200, 1))

        async def tried_again():
            # the NOTIFY makes region one's pservs recover, which no longer
            # lists the lock-out: the owner tries the credentials again
            await self.wait_op((await self.power("node1", "query"))["id"])
            return len(refused) > 3 or None

        await wait_until(tried_again, timeout=20)
        self.assertEqual(len(refused), 4)

    async def test_the_region_records_only_the_owner_s_report_for_the_current_configuration(self):
        from powerctl.rpc import commands

        await self.start_region()
        pserv = await self.start_pserv("pserv-a")
        await self.add_node("node1")

        async def knows():
            return "node1" in pserv.executor.known_nodes() or None

        await wait_until(knows)
        [protocol] = [p for p in pserv.protocols if p.alive]
        report = dict(node="node1", agent=0, failures=3, reason="test", epoch=protocol.epoch)
        answer = await protocol.callRemote(commands.ReportLockout, digest="stale", **report)
        self.assertEqual(answer, {"recorded": False, "id": 0})
        self.assertEqual(await self.get("/v1/lockouts"), [])
        with self.assertRaises(commands.StaleEpoch):
            await protocol.callRemote(commands.ReportLockout, digest="x",
                                      **dict(report, epoch=protocol.epoch + 1))
        answer = await protocol.callRemote(
            commands.ReportLockout, digest=pserv.executor.digest("node1"), **report)
        self.assertTrue(answer["recorded"])
        [row] = await self.get("/v1/lockouts")
        self.assertEqual((row["id"], row["failures"]), (answer["id"], 3))

    async def test_new_credentials_drop_the_lockout_and_the_cli_lists_and_clears(self):
        refused = self.count_refusals()
        await self.start_region()
        await self.start_pserv("pserv-a")
        await self.add_node("node1", power=self.redfish_power("node1", password="wrong"))
        await self.lock_out(refused)
        code, out, err = await self.cli("lockout", "list")
        self.assertEqual(code, 0, err)
        self.assertIn("node1", out)
        self.assertIn("pserv-a", out)
        code, out, err = await self.cli("lockout", "clear", "node1")
        self.assertEqual((code, out.strip()), (0, "node node1: 1 lock-out(s) cleared"), err)
        await self.lock_out(refused.clear() or refused)
        code, _ = await self.call("PUT", "/v1/nodes/node1",
                                  {"power": self.redfish_power("node1")})
        self.assertEqual(code, 200)
        self.assertEqual(await self.get("/v1/lockouts"), [])
        op = await self.wait_op((await self.power("node1", "on"))["id"])
        self.assertEqual(op["state"], "succeeded")


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
