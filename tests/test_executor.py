"""
The pserv's executor: power configurations validated on arrival, and
power-ons staggered on a Clock.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.powerdoc import InvalidPowerDocument
from powerctl.pserv.executor import DriverExecutor, Stagger
from powerctl.registry import PowerAction
from tests.test_multiagent import FakeDriver


class FakeType:
    name = "fake"

    class schema:
        @staticmethod
        def validate(params):
            if set(params) - {"id"}:
                from powerctl.drivers.errors import InvalidParameters
                raise InvalidParameters(sorted(set(params) - {"id"})[0], "unknown parameter")
            return dict(params)

    def __init__(self):
        self.drivers = {}

    def bind(self, settings):
        return self.drivers.setdefault(settings.get("id"), FakeDriver())

    def close(self):
        return defer.succeed(None)


def single(i):
    return {"mode": "single", "agents": [{"driver": "fake", "params": {"id": i}}]}


class ExecutorTests(unittest.TestCase):
    def test_bad_configurations_are_refused_with_a_reason(self):
        executor = DriverExecutor(DriverCatalogue([FakeType()]))
        for power, message in [
            ([], "must be an object"),
            ({"agents": []}, "non-empty"),
            ({"agents": [{"driver": "nope"}]}, "unknown driver 'nope'"),
            ({"agents": [{"driver": "fake", "params": {"x": 1}}]}, "parameter 'x'"),
            ({"mode": "single", "agents": [{"driver": "fake"}, {"driver": "fake"}]}, "exactly 1 agent"),
        ]:
            with self.assertRaises(InvalidPowerDocument) as caught:
                executor.configure("n", power)
            self.assertIn(message, str(caught.exception))
        self.assertEqual(executor.known_nodes(), [])

    def test_a_changed_configuration_reaches_the_driver(self):
        """The pserv must never keep driving the old BMC with the old password."""
        fake = FakeType()
        executor = DriverExecutor(DriverCatalogue([fake]))
        executor.configure("n1", single("old"))
        [old] = executor.drivers("n1")
        executor.configure("n1", single("old"))
        self.assertIs(executor.drivers("n1")[0], old)  # unchanged: not rebuilt
        executor.configure("n1", single("new"))
        [new] = executor.drivers("n1")
        self.assertIsNot(new, old)
        self.assertIs(new, fake.drivers["new"])
        self.assertEqual(executor.config("n1"), single("new"))
        action = PowerAction(node="n1", action="on", operation_id="1")
        executor.execute(action)
        self.assertEqual((old.calls, new.calls), ([], ["on"]))

    def test_power_ons_are_staggered(self):
        clock = task.Clock()
        executor = DriverExecutor(DriverCatalogue([FakeType()]), Stagger(clock, 2.0))
        results = []
        for i in range(3):
            executor.configure(f"n{i}", single(i))
            d = executor.execute(PowerAction(node=f"n{i}", action="on", operation_id=str(i)))
            d.addCallback(results.append)
        off = executor.execute(PowerAction(node="n0", action="off", operation_id="x"))
        self.assertEqual(self.successResultOf(off).state.value, "off")  # offs never wait
        self.assertEqual(len(results), 1)
        clock.advance(2.0)
        self.assertEqual(len(results), 2)
        clock.advance(2.0)
        self.assertEqual(len(results), 3)

    def test_a_cancelled_staggered_on_leaves_no_timer(self):
        clock = task.Clock()
        executor = DriverExecutor(DriverCatalogue([FakeType()]), Stagger(clock, 5.0))
        executor.configure("a", single(1))
        executor.configure("b", single(2))
        executor.execute(PowerAction(node="a", action="on", operation_id="1"))
        d = executor.execute(PowerAction(node="b", action="on", operation_id="2"))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
