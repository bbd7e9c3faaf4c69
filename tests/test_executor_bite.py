"""
The executor where ``make mutate`` found it unpinned (issue 15, run of
2026-12-05, after the canonical-JSON, ``config_text``/``knows`` and lock-out
changes): agents numbered in order, a circuit handed only to drivers that
take one, the lock-out guard told of every agent and of the region's
lock-outs (a malformed entry ignored; a complete listing clearing what it
no longer names), forgetting a node forgetting its registrations, the
digest of the kept canonical text, and the text itself kept as one object
while unchanged.  No sockets: fake driver types and a Clock.
"""

import hashlib
import json

from twisted.internet import task
from twisted.trial import unittest

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.powerdoc import InvalidPowerDocument
from powerctl.pserv.circuits import CircuitBudgets
from powerctl.pserv.executor import DriverExecutor, build_node_power
from powerctl.pserv.lockout import LockoutGuard
from tests.test_executor import FakeType, single



class HostType(FakeType):
    """FakeType whose agents may name a host: one account per host for the guard."""

    class schema:
        secrets = frozenset()

        @staticmethod
        def validate(params):
            return dict(params)


#: two agents on two devices (two accounts for the lock-out guard)
TWO = {"mode": "sequential", "agents": [{"driver": "fake", "params": {"id": 1, "host": "a"}},
                                        {"driver": "fake", "params": {"id": 2, "host": "b"}}]}


class NumberingTests(unittest.TestCase):
    def test_unlabelled_agents_are_numbered_in_order(self):
        power = build_node_power(DriverCatalogue([FakeType()]), {
            "mode": "sequential",
            "agents": [{"driver": "fake", "params": {"id": i}} for i in (1, 2, 3)]})
        self.assertEqual([a.label for a in power.agents], ["0:fake", "1:fake", "2:fake"])

    def test_a_refused_agent_is_named_by_its_own_index(self):
        with self.assertRaises(InvalidPowerDocument) as caught:
            build_node_power(DriverCatalogue([FakeType()]), {
                "mode": "sequential",
                "agents": [{"driver": "fake", "params": {"id": 1}},
                           {"driver": "fake", "params": {"id": 2}},
                           {"driver": "fake", "params": {"bad": 3}}]})
        self.assertIn("power.agents[2]", str(caught.exception))


class CircuitHandOutTests(unittest.TestCase):
    def test_a_driver_without_a_circuit_slot_is_not_given_one(self):
        fake = FakeType()  # its FakeDriver has no ``circuit`` attribute
        executor = DriverExecutor(DriverCatalogue([fake]),
                                  circuits=CircuitBudgets(task.Clock()))
        executor.configure("n1", single(1), circuit={"name": "A", "max_on": 2})
        self.assertFalse(hasattr(fake.drivers[1], "circuit"))
        self.assertEqual(executor.circuit("n1").name, "A")

    def test_an_unknown_node_is_on_no_circuit_and_forgetting_it_is_harmless(self):
        budgets = CircuitBudgets(task.Clock())
        executor = DriverExecutor(DriverCatalogue([FakeType()]), circuits=budgets)
        executor.configure("n1", single(1), circuit={"name": "A", "max_on": 2})
        self.assertIsNone(executor.circuit("n2"))
        executor.forget("n2")
        self.assertIsNotNone(budgets.pacer("A"))

    def test_a_budget_stays_while_another_node_is_on_its_circuit(self):
        budgets = CircuitBudgets(task.Clock())
        executor = DriverExecutor(DriverCatalogue([FakeType()]), circuits=budgets)
        executor.configure("n1", single(1), circuit={"name": "A", "max_on": 2})
        executor.configure("n2", single(2), circuit={"name": "A", "max_on": 2})
        executor.configure("n3", single(3), circuit={"name": "B", "max_on": 1})
        executor.configure("n4", single(4))  # on no circuit
        executor.forget("n1")
        self.assertIsNotNone(budgets.pacer("A"))
        executor.forget("n3")
        self.assertIsNone(budgets.pacer("B"))
        self.assertIsNotNone(budgets.pacer("A"))


class GuardSetup:
    def setUp(self):
        self.guard = LockoutGuard(task.Clock(), limit=3)
        self.executor = DriverExecutor(DriverCatalogue([HostType()]), lockout=self.guard)


class LockoutTests(GuardSetup, unittest.TestCase):
    def test_the_guard_is_the_one_given_or_none(self):
        self.assertIs(self.executor.lockout, self.guard)
        self.assertIsNone(DriverExecutor(DriverCatalogue([FakeType()])).lockout)

    def test_every_agent_is_registered_and_the_region_s_lock_outs_held(self):
        self.executor.configure("n1", TWO, lockouts=[{"agent": 1, "id": 7}])
        self.assertEqual(self.guard.held("n1"), {1: 7})
        # The first agent is registered too: a later hold of it applies.
        self.guard.hold("n1", 0, 8)
        self.assertEqual(self.guard.held("n1"), {0: 8, 1: 7})

    def test_malformed_lock_out_entries_are_ignored(self):
        self.executor.configure("n1", TWO, lockouts=[
            {"agent": 0}, {"id": 3}, "agent id", {"agent": 1, "id": 5}])
        self.assertEqual(self.guard.held("n1"), {1: 5})

    def test_a_complete_listing_clears_what_it_no_longer_names(self):
        self.executor.configure("n1", TWO, lockouts=[{"agent": 0, "id": 7}])
        since = self.guard.generation()
        self.executor.configure("n1", TWO, lockouts=[], since=since)
        self.assertEqual(self.guard.held("n1"), {})

    def test_without_a_listing_mark_held_lock_outs_stay(self):
        self.executor.configure("n1", TWO, lockouts=[{"agent": 0, "id": 7}])
        self.executor.configure("n1", TWO, lockouts=[])
        self.assertEqual(self.guard.held("n1"), {0: 7})

    def test_a_forgotten_node_leaves_the_guard(self):
        self.executor.configure("n1", TWO, lockouts=[{"agent": 0, "id": 7}])
        self.executor.forget("n1")
        self.assertEqual(self.guard.held("n1"), {})
        self.guard.hold("n1", 0, 9)  # no longer registered: nothing to hold
        self.assertEqual(self.guard.held("n1"), {})


class KeptTextTests(unittest.TestCase):
    def setUp(self):
        self.executor = DriverExecutor(DriverCatalogue([FakeType()]))

    def test_the_digest_is_of_the_canonical_text(self):
        self.assertEqual(self.executor.digest("n1"), "")
        power = {"mode": "single", "agents": [{"params": {"id": 1}, "driver": "fake"}]}
        self.executor.configure("n1", power)
        text = json.dumps(power, sort_keys=True)
        self.assertEqual(self.executor.digest("n1"), hashlib.sha256(text.encode()).hexdigest())
        self.assertEqual(self.executor.config_text("n1"), text)
        self.assertEqual(self.executor.config("n1"), power)

    def test_the_text_is_one_object_while_unchanged(self):
        self.executor.configure("n1", single(1))
        text = self.executor.config_text("n1")
        self.executor.configure("n1", json.loads(json.dumps(single(1))))
        self.assertIs(self.executor.config_text("n1"), text)
        self.executor.configure("n1", single(2))
        self.assertIsNot(self.executor.config_text("n1"), text)
        self.assertRaises(KeyError, self.executor.config_text, "n2")

    def test_knows(self):
        self.assertFalse(self.executor.knows("n1"))
        self.executor.configure("n1", single(1))
        self.assertTrue(self.executor.knows("n1"))
        self.executor.forget("n1")
        self.assertFalse(self.executor.knows("n1"))
