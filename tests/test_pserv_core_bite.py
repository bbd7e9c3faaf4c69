"""
The pserv's brain where ``make mutate`` found it unpinned (issue 15, run of
2026-12-05): a fence is refused only when no level can prove it, a recovery
watching for forgotten nodes hears of every one, an operation handed over
and handed back runs again (it is not "superseded by itself"), and a
report with a topology detail is still a hashable value.  Socketless: a
Clock, the registry and the fake executor of tests/test_pserv_core.py.
"""

from twisted.internet import task
from twisted.trial import unittest
from zope.interface import implementer

from powerctl.drivers.topology import FenceRefused
from powerctl.power import PowerState
from powerctl.powerdoc import InvalidPowerDocument
from powerctl.pserv.core import Pserv, Report
from powerctl.registry import IActionExecutor, PowerActionRegistry
from tests.test_pserv_core import POWER, ConfiguredFakeExecutor


@implementer(IActionExecutor)
class FencingFakeExecutor(ConfiguredFakeExecutor):
    """The fake executor plus the executor's fence check: nodes in ``unfenceable`` refuse."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.unfenceable = set()

    def fence_refusal(self, node):
        if node in self.unfenceable:
            return FenceRefused(["0:manual"])
        return None


class Setup:
    def setUp(self):
        self.clock = task.Clock()
        self.executor = FencingFakeExecutor(auto_quiesce=True)
        self.registry = PowerActionRegistry(self.executor, self.clock, cancel_timeout=5)
        self.reports = []
        self.pserv = Pserv(self.registry, self.executor, self.reports.append)
        self.pserv.epoch = 1  # the lease we hold


class FenceDispatchTests(Setup, unittest.TestCase):
    def test_a_fence_that_can_be_proven_runs(self):
        self.assertEqual(self.pserv.dispatch(1, "n1", "fence", POWER), ("started", 0))
        self.assertEqual(self.executor.started_ops(), ["1"])
        self.executor.finish("1", PowerState.OFF)
        self.assertEqual([(r.operation_id, r.outcome) for r in self.reports],
                         [(1, "succeeded")])

    def test_a_fence_no_level_can_prove_is_refused_and_nothing_runs(self):
        self.executor.unfenceable.add("n1")
        with self.assertRaises(InvalidPowerDocument) as caught:
            self.pserv.dispatch(1, "n1", "fence", POWER)
        self.assertIn("fence refused", str(caught.exception))
        self.assertIn("0:manual", str(caught.exception))
        self.assertEqual(self.executor.started_ops(), [])
        self.assertEqual(self.pserv.in_flight(), 0)


class ForgetWatchTests(Setup, unittest.TestCase):
    def test_a_watch_collects_the_nodes_forgotten_until_unwatched(self):
        self.pserv.dispatch(1, "n1", "on", POWER)
        first, second = self.pserv.watch_forgets(), self.pserv.watch_forgets()
        self.pserv.forget_node("n1", "node n1 deleted")
        self.pserv.forget_node("n2", "node n2 moved", report=False)
        self.assertEqual((first, second), ({"n1", "n2"}, {"n1", "n2"}))
        self.pserv.unwatch_forgets(first)
        self.pserv.forget_node("n3", "node n3 deleted")
        self.assertEqual((first, second), ({"n1", "n2"}, {"n1", "n2", "n3"}))


class HandBackTests(Setup, unittest.TestCase):
    """
    An operation whose node was handed over (its cancellation not reported:
    the next owner runs it) can come back to us with the node; it is then
    still the node's newest request and must run, not be superseded.
    """

    def test_an_operation_handed_over_and_back_runs_again(self):
        self.pserv.dispatch(5, "n1", "cycle", POWER)
        self.successResultOf(self.pserv.forget_node("n1", "handed over", report=False))
        self.assertEqual(self.reports, [])
        self.assertEqual(self.pserv.dispatch(5, "n1", "cycle", POWER), ("started", 0))
        self.assertEqual(self.executor.started_ops(), ["5", "5"])
        self.executor.finish("5", PowerState.ON)
        self.assertEqual([(r.operation_id, r.outcome, r.superseded_by) for r in self.reports],
                         [(5, "succeeded", 0)])

    def test_after_a_lost_lease_the_same_operation_runs_under_the_next(self):
        self.pserv.dispatch(5, "n1", "off", POWER)
        self.successResultOf(self.pserv.go_quiet("lease lost"))
        self.pserv.epoch = 2
        self.assertEqual(self.pserv.dispatch(5, "n1", "off", POWER, epoch=2), ("started", 0))
        self.executor.finish("5", PowerState.OFF)
        self.assertEqual([(r.operation_id, r.outcome, r.epoch) for r in self.reports],
                         [(5, "succeeded", 2)])


class ReportValueTests(unittest.TestCase):
    def test_a_report_with_a_detail_is_still_hashable(self):
        # The detail (a JSON object) is left out of the hash on purpose: a
        # Report stays a frozen value whatever the topology said.
        detail = {"level": 1, "devices": [], "verified": True}
        report = Report(4, "succeeded", "on", detail=detail)
        self.assertEqual(hash(report), hash(Report(4, "succeeded", "on", detail=dict(detail))))
