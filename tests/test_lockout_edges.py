"""
The BMC lock-out guard (:mod:`powerctl.pserv.lockout`, issue 10) at the
edges that mutation testing (``make mutate``) showed no test pinned: which
parameters make an account's key, the window's boundary, the defaults, a
node changing credentials or being forgotten while its account is locked
or busy, the order in which waiting attempts get a free turn, a reporter
that fails, and every call of the guarded driver.

Pure: a Clock, no sockets, no database (well under a second).
"""


import attrs
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from powerctl.config import PservConfig
from powerctl.drivers.errors import AuthenticationError, PowerTimeout, UnknownDriver
from powerctl.drivers.interface import IPowerDriver
from powerctl.pserv.lockout import (GuardedDriver, LockoutGuard, agent_key, credentials_key,
                                    guarded)
from tests.test_region_core_more import Logged

REJECTED = "credentials rejected"


def lock(guard, key, times=3):
    for _ in range(times):
        guard.started(key)
        guard.ended(key, "auth")


class KeyTests(unittest.TestCase):
    """One key per account on one device: what names the account counts, nothing else."""

    BASE = {"host": "10.0.0.1", "username": "root", "password": "pw"}

    def key(self, driver="ipmi", secrets=frozenset({"password"}), **changes):
        params = dict(self.BASE, **changes)
        return credentials_key(driver, {k: v for k, v in params.items() if v is not None},
                               secrets)

    def test_each_account_parameter_and_the_driver_make_a_different_key(self):
        base = self.key()
        for change in ({"host": "10.0.0.2"}, {"username": "admin"}, {"port": 624},
                       {"url": "https://bmc"}, {"user": "u"}, {"unit": 2}):
            self.assertNotEqual(self.key(**change), base, change)
        self.assertNotEqual(self.key(driver="redfish"), base)
        # a 128-bit digest (issue 14: memory), the same string object for one account
        self.assertRegex(base, r"^[0-9a-f]{32}$")
        self.assertIs(self.key(), base)

    def test_a_parameter_given_as_none_is_the_same_as_absent(self):
        self.assertEqual(credentials_key("ipmi", dict(self.BASE, port=None), {"password"}),
                         self.key())
        self.assertEqual(credentials_key("ipmi", dict(self.BASE, token=None),
                                         {"password", "token"}), self.key())

    def test_the_secret_is_in_the_key_only_as_a_hash(self):
        self.assertNotEqual(self.key(password="pw2"), self.key())
        self.assertNotIn('"pw"', self.key())
        self.assertRegex(self.key(), r"^[0-9a-f]{32}$")
        # other parameters (timeouts, outlets) say nothing about the account
        self.assertEqual(self.key(timeout=5, outlet=3), self.key())

    def test_a_mapping_secret_is_the_same_whatever_the_order_of_its_keys(self):
        """A webhook's secret headers, say: the same headers are the same account."""
        one = {"url": "https://hook", "headers": {"X-Token": "t", "X-User": "u"}}
        other = {"url": "https://hook", "headers": {"X-User": "u", "X-Token": "t"}}
        self.assertEqual(credentials_key("webhook", one, {"headers"}),
                         credentials_key("webhook", other, {"headers"}))
        self.assertNotEqual(credentials_key("webhook", one, {"headers"}), credentials_key(
            "webhook", {"url": "https://hook", "headers": {"X-Token": "t2", "X-User": "u"}},
            {"headers"}))

    def test_an_agent_s_key_hides_what_its_driver_declares_secret(self):
        class Schema:
            secrets = frozenset({"password"})

        class Type:
            schema = Schema()

        class Catalogue:
            def get(self, name):
                if name != "ipmi":
                    raise UnknownDriver(name, {"ipmi": Type})
                return Type

        agent = {"driver": "ipmi", "params": dict(self.BASE)}
        self.assertEqual(agent_key(Catalogue(), agent), self.key())
        # a driver the catalogue does not know (removed since): still a key,
        # with no parameter taken for a secret
        unknown = agent_key(Catalogue(), {"driver": "gone", "params": dict(self.BASE)})
        self.assertEqual(unknown, credentials_key("gone", self.BASE, frozenset()))
        self.assertEqual(agent_key(Catalogue(), {"driver": "gone", "params": None}),
                         credentials_key("gone", {}, frozenset()))


class WindowAndDefaultsTests(unittest.TestCase):
    def test_a_failure_exactly_one_window_old_no_longer_counts(self):
        clock = task.Clock()
        guard = LockoutGuard(clock, limit=3, window=300.0)
        lock(guard, "k", times=2)
        clock.advance(299.999)
        self.assertEqual(guard.failures("k"), 2)
        clock.advance(0.001)
        self.assertEqual(guard.failures("k"), 0)

    def test_the_third_failure_locks_not_the_second(self):
        guard = LockoutGuard(task.Clock(), limit=3)
        lock(guard, "k", times=2)
        guard.ended("k", "ok")  # (a success clears them)
        lock(guard, "k", times=2)
        self.assertNotIn(REJECTED, guard.refusal("k") or "")
        lock(guard, "k", times=1)
        self.assertIn(REJECTED, guard.refusal("k"))

    def test_a_guard_built_without_settings_uses_the_settings_defaults(self):
        """(3 refusals within 300 s: below OpenBMC's 5, so the pserv stops first.)"""
        defaults = attrs.fields_dict(PservConfig)
        guard = LockoutGuard(task.Clock())
        self.assertEqual((guard.limit, guard.window),
                         (defaults["auth_failure_limit"].default,
                          defaults["auth_failure_window"].default))
        lock(guard, "k")
        self.assertIn("(3 times within 300 s)", guard.refusal("k"))


class CredentialsChangeTests(unittest.TestCase):
    """A node moving to new credentials, or forgotten, while its account is locked or busy."""

    def setUp(self):
        self.clock = task.Clock()
        self.reported = []
        self.guard = LockoutGuard(self.clock, limit=3, window=300.0,
                                  on_lockout=lambda *a: self.reported.append(a[:2]))

    def test_moving_away_from_locked_credentials_drops_that_node_s_hold(self):
        """
        The lock-out was the node's: its operator fixed the password.  Put
        back later, the old credentials are tried afresh (the device may
        have been fixed instead), and no stale failure counts.
        """
        self.guard.register("n1", 0, "k")
        lock(self.guard, "k")
        self.assertEqual(self.guard.held("n1"), {0: None})
        self.guard.register("n1", 0, "k2")
        self.assertEqual(self.guard.held("n1"), {})
        self.guard.register("n1", 0, "k")
        self.assertIsNone(self.guard.refusal("k"))
        self.assertEqual(self.guard.failures("k"), 0)

    def test_one_node_moving_away_leaves_the_other_users_locked(self):
        self.guard.register("n1", 0, "k")
        self.guard.register("n2", 0, "k")
        lock(self.guard, "k")
        self.guard.register("n1", 0, "k2")
        self.assertIn(REJECTED, self.guard.refusal("k"))
        self.assertEqual(self.guard.held("n2"), {0: None})
        self.guard.register("n2", 0, "k")  # the same credentials again: nothing changes
        self.assertEqual(self.guard.held("n2"), {0: None})
        self.assertIn(REJECTED, self.guard.refusal("k"))

    def test_forgetting_a_node_keeps_its_failures_counting(self):
        """
        The lock-out stays with the region (the next owner gets it); here
        the failures still count until the window passes, so a call for
        another node on the same account is not tried meanwhile.
        """
        self.guard.register("n1", 0, "k")
        lock(self.guard, "k")
        self.guard.unregister("n1")
        self.assertEqual(self.guard.held("n1"), {})
        self.assertIn(REJECTED, self.guard.refusal("k"))
        self.guard.register("n2", 0, "k")
        self.assertIn(REJECTED, self.guard.refusal("k"))
        self.clock.advance(300)
        self.assertIsNone(self.guard.refusal("k"))

    def test_forgetting_a_node_does_not_forget_the_attempts_in_flight(self):
        self.guard.register("n1", 0, "k")
        self.guard.started("k")
        self.guard.started("k")
        self.guard.unregister("n1")  # its calls are still with the device
        self.guard.register("n2", 0, "k")
        self.assertIsNone(self.guard.refusal("k"))
        self.guard.started("k")
        self.assertIn("in flight", self.guard.refusal("k"))

    def test_a_node_s_held_agents_are_those_of_a_locked_account(self):
        self.guard.register("n1", 0, "k")
        self.guard.register("n1", 1, "k1")
        self.assertEqual(self.guard.held("n1"), {})  # never tried: no account yet
        self.assertIsNone(self.guard.refusal("k1"))
        self.assertEqual(self.guard.held("n1"), {})  # tried, not locked
        lock(self.guard, "k1")
        self.assertEqual(self.guard.held("n1"), {1: None})
        self.guard.acknowledged("n1", 1, 9)
        self.assertEqual(self.guard.held("n1"), {1: 9})
        self.assertEqual(self.guard.held("n2"), {})

    def test_an_acknowledgement_for_a_node_not_held_changes_nothing(self):
        self.guard.register("n1", 0, "k")
        before = self.guard.generation()
        self.guard.acknowledged("n1", 0, 4)  # (cleared meanwhile)
        self.guard.acknowledged("ghost", 0, 5)
        self.assertEqual(self.guard.generation(), before + 2)
        self.assertEqual(self.guard.held("n1"), {})
        self.assertIsNone(self.guard.refusal("k"))
        self.guard.hold("ghost", 0, 6)  # not driven here: nothing to hold
        self.assertEqual(self.guard.held("ghost"), {})

    def test_a_hold_for_a_node_makes_its_credentials_unproven_again(self):
        """
        The region says n1's credentials are locked out; n1 then moves to
        another pserv.  n2 (same account, never held) may go on, but as
        with credentials not proven: no more at once than may be refused.
        """
        self.guard.register("n1", 0, "k")
        self.guard.register("n2", 0, "k")
        self.guard.hold("n1", 0, 3)
        self.assertIn(REJECTED, self.guard.refusal("k"))
        self.guard.unregister("n1")
        for _ in range(3):
            self.assertIsNone(self.guard.refusal("k"))
            self.guard.started("k")
        self.assertIn("in flight", self.guard.refusal("k"))

    def test_credentials_proven_stay_proven_while_a_node_still_uses_them(self):
        self.guard.register("n1", 0, "k")
        self.guard.register("n2", 0, "k")
        self.guard.started("k")
        self.guard.ended("k", "ok")
        self.guard.unregister("n1")
        for _ in range(5):  # proven: no bound on attempts at once
            self.assertIsNone(self.guard.refusal("k"))
            self.guard.started("k")

    def test_an_account_nobody_uses_any_more_is_forgotten(self):
        """
        A pserv drives thousands of nodes over its life: an idle account
        with no node left is dropped, and credentials that come back later
        are unproven again, as new ones.
        """
        self.guard.register("n1", 0, "k")
        self.guard.started("k")
        self.guard.ended("k", "ok")
        self.guard.unregister("n1")
        self.guard.register("n2", 0, "k")
        for _ in range(3):
            self.assertIsNone(self.guard.refusal("k"))
            self.guard.started("k")
        self.assertIn("in flight", self.guard.refusal("k"))

    def test_a_cleared_lock_out_starts_afresh_unproven(self):
        """
        Even when an attempt in flight at the lock-out succeeded meanwhile
        (proving nothing for sure: the device may have been changed), the
        operator's clearing starts the credentials unproven.
        """
        self.guard.register("n1", 0, "k")
        self.guard.started("k")
        self.guard.ended("k", "ok")  # proven: five at once
        for _ in range(5):
            self.guard.started("k")
        for _ in range(3):
            self.guard.ended("k", "auth")
        self.assertEqual(self.guard.held("n1"), {0: None})
        self.guard.ended("k", "ok")  # the fourth, sent before the lock-out
        self.assertIn(REJECTED, self.guard.refusal("k"))
        self.guard.ended("k", "other")
        self.guard.acknowledged("n1", 0, 1)
        self.guard.release("n1")
        for _ in range(3):
            self.assertIsNone(self.guard.refusal("k"))
            self.guard.started("k")
        self.assertIn("in flight", self.guard.refusal("k"))

    def test_releasing_one_agent_leaves_the_node_s_other_agents_held(self):
        self.guard.register("n1", 0, "k0")
        self.guard.register("n1", 1, "k1")
        self.guard.hold("n1", 0, 1)
        self.guard.hold("n1", 1, 2)
        self.guard.release("n1", agent=1)
        self.assertEqual(self.guard.held("n1"), {0: 1})
        self.assertIsNone(self.guard.refusal("k1"))
        self.assertIn(REJECTED, self.guard.refusal("k0"))

    def test_a_listing_that_names_an_agent_keeps_it_and_one_that_does_not_clears_it(self):
        for agent in (0, 1, 2):
            self.guard.register("n1", agent, f"k{agent}")
        self.guard.sync("n1", {0: 4, 1: 5, 2: 6}, self.guard.generation())
        self.assertEqual(self.guard.held("n1"), {0: 4, 1: 5, 2: 6})
        # each agent on its own: one kept does not stop the next being cleared
        self.guard.sync("n1", {0: 4, 2: 6}, self.guard.generation())
        self.assertEqual(self.guard.held("n1"), {0: 4, 2: 6})
        self.assertIsNone(self.guard.refusal("k1"))
        self.assertIn(REJECTED, self.guard.refusal("k2"))
        # nor does one that was not held
        self.guard.sync("n1", {}, self.guard.generation())
        self.assertEqual(self.guard.held("n1"), {})
        self.assertIsNone(self.guard.refusal("k2"))

    def test_a_listing_read_before_the_region_acknowledged_clears_nothing(self):
        self.guard.register("n1", 0, "k")
        since = self.guard.generation()
        lock(self.guard, "k")
        self.guard.acknowledged("n1", 0, 7)  # the region recorded it after the read
        self.guard.sync("n1", {}, since)
        self.assertEqual(self.guard.held("n1"), {0: 7})
        # and one read right after the acknowledgement does clear it
        self.guard.sync("n1", {}, self.guard.generation())
        self.assertEqual(self.guard.held("n1"), {})
        self.assertIsNone(self.guard.refusal("k"))


class ReporterTests(Logged):

    def test_a_guard_without_a_reporter_locks_quietly(self):
        guard = LockoutGuard(task.Clock(), limit=3)
        guard.register("n1", 0, "k")
        lock(guard, "k")
        self.assertIn(REJECTED, guard.refusal("k"))
        self.assertEqual(self.logged("reporting the lock-out"), [])

    def test_a_failing_reporter_is_logged_and_the_other_nodes_are_still_reported(self):
        reported = []

        def report(node, agent, failures, reason):
            reported.append((node, agent, failures, reason))
            if node == "n1":
                raise RuntimeError("link down")

        guard = LockoutGuard(task.Clock(), limit=3, window=60.0, on_lockout=report)
        guard.register("n1", 0, "k")
        guard.register("n2", 2, "k")
        lock(guard, "k")
        self.assertEqual(reported, [("n1", 0, 3, "3 authentication failures within 60 s"),
                                    ("n2", 2, 3, "3 authentication failures within 60 s")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.logged("reporting the lock-out of node n1")), 1)
        self.assertIn(REJECTED, guard.refusal("k"))


class Device:
    """An inner driver: each call is a Deferred the test ends, noted by name."""

    capabilities = object()
    model = "bmc-9"

    def __init__(self):
        self.calls = []
        self.pending = []

    def _call(self, name):
        self.calls.append(name)
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def on(self):
        return self._call("on")

    def off(self):
        return self._call("off")

    def soft_off(self):
        return self._call("soft_off")

    def cycle(self):
        return self._call("cycle")

    def query(self):
        return self._call("query")

    def quiesced(self):
        self.calls.append("quiesced")
        return defer.succeed("quiet")


class GuardedDriverEdgeTests(unittest.TestCase):
    def test_each_power_call_reaches_its_own_method_through_the_guard(self):
        guard = LockoutGuard(task.Clock(), limit=3)
        device = Device()
        driver = GuardedDriver(device, guard, "k")
        verifyObject(IPowerDriver, driver)
        self.assertIs(driver.capabilities, device.capabilities)
        self.assertEqual(driver.model, "bmc-9")  # anything else is the inner driver's
        calls = [driver.on(), driver.off(), driver.soft_off()]
        self.assertEqual(device.calls, ["on", "off", "soft_off"])
        self.assertNoResult(driver.cycle())  # unproven: three in flight already
        for d, answer in zip(list(device.pending), ("on", "off", "off")):
            d.callback(answer)
        self.assertEqual([self.successResultOf(d) for d in calls], ["on", "off", "off"])
        self.assertEqual(device.calls, ["on", "off", "soft_off", "cycle"])
        d = driver.query()
        self.assertEqual(device.calls[-1], "query")
        device.pending[-1].errback(AuthenticationError("refused"))
        self.failureResultOf(d, AuthenticationError)
        self.assertEqual(guard.failures("k"), 1)

    def test_waiting_for_quiet_is_not_an_attempt_and_is_not_refused(self):
        guard = LockoutGuard(task.Clock(), limit=3)
        lock(guard, "k")
        device = Device()
        driver = GuardedDriver(device, guard, "k")
        self.assertEqual(self.successResultOf(driver.quiesced()), "quiet")
        self.failureResultOf(driver.on(), AuthenticationError)
        self.assertEqual(device.calls, ["quiesced"])

    def test_waiting_attempts_take_free_turns_in_arrival_order(self):
        guard = LockoutGuard(task.Clock(), limit=2)
        device = Device()
        driver = GuardedDriver(device, guard, "k")
        results = [driver.on(), driver.off(), driver.cycle(), driver.query()]
        self.assertEqual(device.calls, ["on", "off"])
        device.pending[0].errback(PowerTimeout("slow"))  # one turn frees
        self.assertEqual(device.calls, ["on", "off", "cycle"])
        device.pending[1].errback(PowerTimeout("slow"))
        self.assertEqual(device.calls, ["on", "off", "cycle", "query"])
        for d in results[:2]:
            self.failureResultOf(d, PowerTimeout)

    def test_a_locked_account_fails_every_waiting_attempt_without_a_call(self):
        guard = LockoutGuard(task.Clock(), limit=2)
        device = Device()
        driver = GuardedDriver(device, guard, "k")
        results = [driver.on() for _ in range(4)]
        for d in list(device.pending):
            d.errback(AuthenticationError("refused"))
        for d in results[:2]:
            self.assertEqual(self.failureResultOf(d, AuthenticationError).getErrorMessage(),
                             "refused")
        for d in results[2:]:
            self.assertIn(REJECTED, self.failureResultOf(d, AuthenticationError)
                          .getErrorMessage())
        self.assertEqual(len(device.calls), 2)

    def test_guarded_keys_the_driver_by_its_agent_s_credentials(self):
        class Catalogue:
            def get(self, name):
                raise UnknownDriver(name, {})

        guard = LockoutGuard(task.Clock(), limit=3)
        agent = {"driver": "ipmi", "params": {"host": "h", "username": "u"}}
        device = Device()
        driver = guarded(device, guard, Catalogue(), agent)
        lock(guard, agent_key(Catalogue(), agent))
        self.failureResultOf(driver.on(), AuthenticationError)
        self.assertEqual(device.calls, [])


class AgentIndexTests(unittest.TestCase):
    """One tuple of keys per node, by agent index: out-of-range indexes and padding."""

    def setUp(self):
        self.guard = LockoutGuard(task.Clock())

    def test_a_negative_agent_index_is_refused_and_changes_nothing(self):
        self.guard.register("n1", 0, "A")
        with self.assertRaises(ValueError):
            self.guard.register("n1", -1, "B")
        self.assertEqual(self.guard._nodes["n1"], ("A",))

    def test_a_negative_or_too_large_index_names_no_key(self):
        self.guard.register("n1", 0, "A")
        self.guard.register("n1", 1, "B")
        self.assertIsNone(self.guard._key_of("n1", -1))
        self.assertIsNone(self.guard._key_of("n1", 2))
        self.assertIsNone(self.guard._key_of("n1", "0"))
        self.assertIsNone(self.guard._key_of("n2", 0))
        # nor does the region's hold of such an agent reach an account
        self.guard.hold("n1", -1, 7)
        self.assertEqual(self.guard.held("n1"), {})
        self.assertFalse(self.guard._accounts)

    def test_an_agent_beyond_the_tuple_pads_it_with_none_exactly(self):
        self.guard.register("n1", 1, "B")
        self.assertEqual(self.guard._nodes["n1"], (None, "B"))
        self.assertEqual(self.guard._key_of("n1", 1), "B")
        self.assertIsNone(self.guard._key_of("n1", 0))
        self.guard.register("n2", 0, "A")
        self.guard.register("n2", 2, "C")
        self.assertEqual(self.guard._nodes["n2"], ("A", None, "C"))
        self.guard.register("n2", 3, "D")
        self.assertEqual(self.guard._nodes["n2"], ("A", None, "C", "D"))

    def test_re_registering_one_agent_keeps_the_agents_after_it(self):
        self.guard.register("n1", 0, "A")
        self.guard.register("n1", 1, "B")
        self.guard.register("n1", 2, "C")
        self.guard.register("n1", 0, "A2")
        self.assertEqual(self.guard._nodes["n1"], ("A2", "B", "C"))
        self.guard.register("n1", 1, "B2")
        self.assertEqual(self.guard._nodes["n1"], ("A2", "B2", "C"))


class UnregisterTests(unittest.TestCase):
    """Forgetting a node: each of its keys once, with all of its agents using it."""

    def setUp(self):
        self.guard = LockoutGuard(task.Clock())

    def test_dual_outlets_on_one_key_forgotten_while_another_node_shares_it(self):
        g = self.guard
        g.register("n1", 0, "K")
        g.register("n1", 1, "K")
        g.register("n2", 0, "K")
        for node, agent in (("n1", 0), ("n1", 1), ("n2", 0)):
            g.hold(node, agent, 5)
        g.unregister("n1")
        self.assertNotIn("n1", g._nodes)
        self.assertEqual(g.held("n1"), {})
        self.assertEqual(g.held("n2"), {0: 5})
        self.assertEqual(set(g._accounts["K"].held), {("n2", 0)})
        self.assertIsNotNone(g.refusal("K"))
        # registered again, the agent has no lock-out id of its own any more
        # (the region sends it back with the configuration: hold())
        g.register("n1", 0, "K")
        self.assertNotIn(("n1", 0), g._accounts["K"].held)

    def test_dual_outlets_on_one_key_forgotten_while_no_other_node_uses_it(self):
        g = self.guard
        g.register("n1", 0, "K")
        g.register("n1", 1, "K")
        g.hold("n1", 0, 5)
        g.hold("n1", 1, 6)
        g.unregister("n1")
        self.assertNotIn("n1", g._nodes)
        self.assertNotIn("K", g._accounts)
        self.assertFalse(g.proven("K"))

    def test_a_proven_account_only_this_node_used_goes_with_it(self):
        g = self.guard
        g.register("n1", 0, "K")
        g.register("n1", 1, "K")
        g.register("n2", 0, "K")
        g.started("K")
        g.ended("K", "ok")
        g.unregister("n1")
        self.assertTrue(g.proven("K"))
        g.unregister("n2")
        self.assertNotIn("K", g._accounts)
        self.assertFalse(g._nodes)

    def test_a_node_with_agents_on_two_keys(self):
        g = self.guard
        g.register("n1", 0, "A")
        g.register("n1", 2, "B")
        g.register("n2", 0, "B")
        g.hold("n1", 0, 1)
        g.hold("n1", 2, 2)
        g.hold("n2", 0, 3)
        g.unregister("n1")
        self.assertNotIn("n1", g._nodes)
        self.assertNotIn("A", g._accounts)
        self.assertEqual(set(g._accounts["B"].held), {("n2", 0)})
        self.assertEqual(g.held("n2"), {0: 3})
        g.unregister("n2")
        self.assertFalse(g._accounts)

    def test_forgetting_an_unknown_node_changes_nothing(self):
        g = self.guard
        g.register("n1", 0, "A")
        g.unregister("n9")
        self.assertEqual(g._nodes, {"n1": ("A",)})


class AcceptedTests(unittest.TestCase):
    """The driver's first answer while an attempt is under way proves the key."""

    def setUp(self):
        self.clock = task.Clock()
        self.guard = LockoutGuard(self.clock, limit=3)

    def test_an_unknown_key_is_a_no_op(self):
        self.guard.accepted("nobody")
        self.assertNotIn("nobody", self.guard._accounts)
        self.assertFalse(self.guard.proven("nobody"))

    def test_the_first_acceptance_proves_the_key_and_lets_the_waiting_go(self):
        g, calls = self.guard, []
        pending = [defer.Deferred() for _ in range(4)]
        for d in pending:
            g.attempt("K", lambda d=d: calls.append(d) or d)
        self.assertEqual(len(calls), 3)  # the fourth waits for a proof
        g.started("K")
        g.ended("K", "auth")  # one failure so far: cleared by the proof
        self.assertEqual(g.failures("K"), 1)
        g.accepted("K")
        self.assertTrue(g.proven("K"))
        self.assertEqual(g.failures("K"), 0)
        self.assertEqual(len(calls), 4)
        for d in pending:
            d.callback(None)

    def test_an_already_proven_key_is_left_alone(self):
        g = self.guard
        g.started("K")
        g.ended("K", "ok")
        account = g._accounts["K"]
        # a state no caller makes, to see that nothing is touched
        account.failures.append(self.clock.seconds())
        waiter = defer.Deferred()
        account.waiting.append(waiter)
        g.accepted("K")
        self.assertTrue(g.proven("K"))
        self.assertEqual(len(account.failures), 1)
        self.assertEqual(account.waiting, [waiter])


class Answering(Device):
    """An inner driver of a verifying kind (it declares ``accepted``)."""

    accepted = None

    def _call(self, name):
        self.calls.append((name, "accepted" in self.__dict__))
        d = defer.Deferred()
        self.pending.append(d)
        return d


class Plain(Device):
    """An inner driver with no ``accepted`` (a PDU's outlet, say)."""

    def _call(self, name):
        self.calls.append((name, hasattr(self, "accepted")))
        d = defer.Deferred()
        self.pending.append(d)
        return d


class ProofHookTests(unittest.TestCase):
    """GuardedDriver gives the driver the ``accepted`` hook only when it can help."""

    def setUp(self):
        self.guard = LockoutGuard(task.Clock())

    def test_a_proven_key_never_gets_the_hook(self):
        self.guard.started("K")
        self.guard.ended("K", "ok")
        inner = Answering()
        GuardedDriver(inner, self.guard, "K").on()
        self.assertEqual(inner.calls, [("on", False)])
        inner.pending[0].callback(None)

    def test_a_driver_without_accepted_never_gets_one(self):
        inner = Plain()
        GuardedDriver(inner, self.guard, "K").on()
        self.assertEqual(inner.calls, [("on", False)])
        inner.pending[0].callback(None)
        self.assertFalse(hasattr(inner, "accepted"))

    def test_an_unproven_key_gives_the_hook_for_the_attempt_only(self):
        inner = Answering()
        done = GuardedDriver(inner, self.guard, "K").query()
        self.assertEqual(inner.calls, [("query", True)])
        self.assertFalse(self.guard.proven("K"))
        inner.accepted()  # the device's first answer
        self.assertTrue(self.guard.proven("K"))
        inner.pending[0].callback("on")
        self.assertEqual(self.successResultOf(done), "on")
        self.assertNotIn("accepted", inner.__dict__)
        self.assertIsNone(inner.accepted)


class UseCountTests(unittest.TestCase):
    """
    The guard counts the (node, agent) pairs using each key, so "is this
    account still used?" costs no walk over every node (a pserv forgetting
    10,000 nodes at its stop was quadratic).  The count must agree with the
    nodes' keys after any sequence of registrations and forgettings.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 2),
                              st.sampled_from(["k1", "k2", "k3", None])), max_size=40))
    def test_used_agrees_with_the_registered_keys(self, steps):
        guard = LockoutGuard(task.Clock(), limit=3)
        for node, agent, key in steps:
            if key is None:
                guard.unregister(node)
            else:
                guard.register(node, agent, key)
            for k in ("k1", "k2", "k3"):
                walked = any(k == used for keys in guard._nodes.values() for used in keys)
                self.assertEqual(guard._used(k), walked, (steps, k))
