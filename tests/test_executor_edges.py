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
