"""
Executor edges found by mutation testing (``make mutate``): agents get a
label for the journal even when the configuration gives none, the stagger
counts from the clock's present (not from its epoch), and the executor is
a real :class:`IActionExecutor`.
"""

from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.powerdoc import InvalidPowerDocument
from powerctl.pserv.executor import DriverExecutor, Stagger, build_node_power
from powerctl.registry import IActionExecutor, PowerAction
from tests.test_executor import FakeType, single


class LabelTests(unittest.TestCase):
    def test_agents_are_labelled_by_position_and_driver_unless_named(self):
        power = build_node_power(DriverCatalogue([FakeType()]), {
            "mode": "sequential",
            "agents": [{"driver": "fake", "params": {"id": 1}},
                       {"driver": "fake", "params": {"id": 2}, "label": "psu-b"}],
        })
        self.assertEqual([a.label for a in power.agents], ["0:fake", "psu-b"])

    def test_the_label_reaches_the_outcome(self):
        executor = DriverExecutor(DriverCatalogue([FakeType()]))
        executor.configure("n1", single(1))
        d = executor.execute(PowerAction(node="n1", action="on", operation_id="1"))
        self.assertEqual(self.successResultOf(d).agent, "0:fake")


class StaggerTests(unittest.TestCase):
    def test_spacing_counts_from_now_on_a_running_clock(self):
        clock = task.Clock()
        clock.advance(1000)  # a real reactor's clock is far from zero
        stagger = Stagger(clock, 2.0)
        first, second, third = stagger.slot(), stagger.slot(), stagger.slot()
        self.successResultOf(first)
        self.assertNoResult(second)
        clock.advance(2.0)
        self.successResultOf(second)
        self.assertNoResult(third)
        clock.advance(2.0)
        self.successResultOf(third)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_after_a_quiet_spell_an_on_goes_at_once(self):
        clock = task.Clock()
        stagger = Stagger(clock, 2.0)
        self.successResultOf(stagger.slot())
        clock.advance(10)
        self.successResultOf(stagger.slot())


class InterfaceTests(unittest.TestCase):
    def test_the_executor_provides_the_interface(self):
        executor = DriverExecutor(DriverCatalogue([FakeType()]))
        self.assertTrue(verifyObject(IActionExecutor, executor))


class CountingType(FakeType):
    """Builds a new driver object on every bind, and counts them."""

    def __init__(self):
        super().__init__()
        self.binds = 0

    def bind(self, settings):
        from tests.test_multiagent import FakeDriver

        self.binds += 1
        return FakeDriver()


class ConfigurationTests(unittest.TestCase):
    def test_an_agent_without_a_driver_is_refused(self):
        executor = DriverExecutor(DriverCatalogue([FakeType()]))
        for agent, why in (({"params": {}}, "'driver' is required"), ("fake", "must be an object")):
            with self.assertRaises(Exception) as caught:
                executor.configure("n", {"agents": [agent]})
            self.assertIsInstance(caught.exception, InvalidPowerDocument)
            self.assertIn(f"power.agents[0]: {why}", str(caught.exception))

    def test_the_same_configuration_again_keeps_the_drivers(self):
        # The region may send the same document with its keys in another
        # order (it comes out of jsonb): the drivers, with their sessions,
        # are kept.
        fake = CountingType()
        executor = DriverExecutor(DriverCatalogue([fake]))
        executor.configure("n1", {"mode": "single", "agents": [
            {"driver": "fake", "params": {"id": 1}, "label": "bmc"}]})
        [driver] = executor.drivers("n1")
        executor.configure("n1", {"agents": [
            {"label": "bmc", "params": {"id": 1}, "driver": "fake"}], "mode": "single"})
        self.assertIs(executor.drivers("n1")[0], driver)
        self.assertEqual(fake.binds, 1)
        executor.configure("n1", single(2))
        self.assertEqual(fake.binds, 2)

    def test_an_unconfigured_node_is_an_invalid_configuration(self):
        executor = DriverExecutor(DriverCatalogue([FakeType()]))
        action = PowerAction(node="stranger", action="on", operation_id="1")
        self.assertRaises(InvalidPowerDocument, executor.execute, action)
        self.assertRaises(InvalidPowerDocument, executor.quiesced, action)


class QueryableTests(unittest.TestCase):
    def test_drivers_without_capabilities_count_as_queryable(self):
        executor = DriverExecutor(DriverCatalogue([FakeType()]))
        executor.configure("n1", single(1))
        self.assertTrue(executor.queryable("n1"))

    def test_drivers_that_say_they_are_queryable_are(self):
        from powerctl.drivers.interface import Capabilities

        fake = FakeType()
        executor = DriverExecutor(DriverCatalogue([fake]))
        executor.configure("n1", single(1))
        fake.drivers[1].capabilities = Capabilities(queryable=True)
        self.assertTrue(executor.queryable("n1"))
        fake.drivers[1].capabilities = Capabilities(queryable=False)
        self.assertFalse(executor.queryable("n1"))


class SlotsPropertyTests(unittest.TestCase):
    def test_slots_are_the_pool_given_or_none(self):
        from powerctl.pserv.slots import PrioritySlots

        self.assertIsNone(DriverExecutor(DriverCatalogue([FakeType()])).slots)
        pool = PrioritySlots(2)
        self.assertIs(DriverExecutor(DriverCatalogue([FakeType()]), slots=pool).slots, pool)

    def test_the_catalogue_is_the_one_given(self):
        catalogue = DriverCatalogue([FakeType()])
        self.assertIs(DriverExecutor(catalogue).catalogue, catalogue)
