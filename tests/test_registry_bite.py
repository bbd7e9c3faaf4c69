"""
The registry and its value types where they changed since their last
mutation run (issue 15, 2026-12-05): ``cancel_all`` fires only once every
node is quiet (a lost lease waits on it before forgetting nodes), what a
topology observed reaches the outcome as its ``detail``, and
``Observed.detail`` says only what there is.  Socketless: a Clock and the
fake executor.
"""

from twisted.internet import task
from twisted.trial import unittest

from powerctl.drivers.topology import DeviceResult
from powerctl.power import Action, PowerState
from powerctl.registry import Cancelled, Observed, Outcome, PowerAction, PowerActionRegistry
from tests.fakes import FakeExecutor


class CancelAllTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.executor = FakeExecutor(auto_quiesce=False)
        self.registry = PowerActionRegistry(self.executor, self.clock, cancel_timeout=5)

    def submit(self, op, node):
        a = PowerAction(node=node, action=Action.ON, operation_id=op)
        return self.registry.submit(a)

    def test_fires_once_every_node_is_quiet(self):
        results = [self.submit("1", "n1"), self.submit("2", "n2")]
        d = self.registry.cancel_all("lease lost")
        self.assertEqual(sorted(self.executor.cancelled), ["1", "2"])
        self.executor.quiesce("1")
        self.assertNoResult(d)  # n2's device still busy
        self.executor.quiesce("2")
        self.assertIsNone(self.successResultOf(d))
        for r in results:
            self.assertEqual(self.failureResultOf(r, Cancelled).value.reason, "lease lost")

    def test_with_nothing_in_play_it_fires_at_once(self):
        self.assertIsNone(self.successResultOf(self.registry.cancel_all()))


class DetailTests(unittest.TestCase):
    def test_the_topology_s_detail_reaches_the_outcome(self):
        clock = task.Clock()
        executor = FakeExecutor()
        registry = PowerActionRegistry(executor, clock)
        d = registry.submit(PowerAction(node="n1", action=Action.ON, operation_id="1"))
        executor.finish("1", Observed(PowerState.ON, "0:ipmi", level=1,
                                      devices=(DeviceResult("0:ipmi", PowerState.ON),)))
        outcome = self.successResultOf(d)
        self.assertIsInstance(outcome, Outcome)
        self.assertEqual(outcome.detail, {"level": 1, "verified": True, "devices": [
            {"agent": "0:ipmi", "state": "on"}]})

    def test_a_plain_state_has_no_detail(self):
        clock = task.Clock()
        executor = FakeExecutor()
        registry = PowerActionRegistry(executor, clock)
        d = registry.submit(PowerAction(node="n1", action=Action.OFF, operation_id="1"))
        executor.finish("1", PowerState.OFF)
        self.assertIsNone(self.successResultOf(d).detail)


class ObservedDetailTests(unittest.TestCase):
    def test_without_a_level_there_is_none(self):
        self.assertIsNone(Observed(PowerState.ON, "bmc").detail())

    def test_the_warning_and_failed_levels_only_when_there_are_some(self):
        plain = Observed(PowerState.ON, level=2, verified=False).detail()
        self.assertEqual(plain, {"level": 2, "devices": [], "verified": False})
        full = Observed(PowerState.ON, level=2, warning="on through psu-a only",
                        failed_levels=({"level": 1},)).detail()
        self.assertEqual(full, {"level": 2, "devices": [], "verified": True,
                                "warning": "on through psu-a only",
                                "failed_levels": [{"level": 1}]})

    def test_an_outcome_with_a_detail_is_still_hashable(self):
        detail = {"level": 1, "devices": [], "verified": True}
        a = Outcome("1", Action.ON, PowerState.ON, detail=detail)
        self.assertEqual(hash(a), hash(Outcome("1", Action.ON, PowerState.ON, detail=dict(detail))))
