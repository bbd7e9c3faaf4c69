"""
The pserv's brain at its edges, found by mutation testing (``make mutate``):
the exact reports sent to the region (0 means "none" on the wire), the
disposition ``dispatch`` answers with, what a shutdown reports and what it
keeps quiet, how many finished operations are remembered, and confirming
a manual fallback agent after the first one gave up.
"""

from twisted.internet import task
from twisted.python.failure import Failure
from twisted.trial import unittest

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.errors import UnreachableError
from powerctl.drivers.manual import ManualDriverType
from powerctl.power import Action, PowerState
from powerctl.pserv.core import Pserv, Report, report_for
from powerctl.registry import Cancelled, Outcome, PowerAction, PowerActionRegistry, Superseded
from tests.test_pserv_core import POWER, ConfiguredFakeExecutor


def action(op, joined=None):
    a = PowerAction(node="n1", action="off", operation_id=str(op))
    a.coalesced_into = joined
    return a


class ReportTests(unittest.TestCase):
    def test_success_of_its_own_run(self):
        out = Outcome("4", Action.OFF, PowerState.OFF, agent="bmc")
        self.assertEqual(report_for(action(4), out),
                         Report(4, "succeeded", "off", "bmc", "", 0, 0))

    def test_success_of_a_joined_request_names_the_leader(self):
        out = Outcome("5", Action.OFF, PowerState.OFF, coalesced_into="4")
        self.assertEqual(report_for(action(5, "4"), out),
                         Report(5, "succeeded", "off", "", "", 4, 0))

    def test_superseded_and_cancelled(self):
        self.assertEqual(report_for(action(4), Failure(Superseded("4", "9"))),
                         Report(4, "superseded", superseded_by=9))
        self.assertEqual(report_for(action(4), Cancelled("4", "node deleted")),
                         Report(4, "cancelled", error="node deleted"))

    def test_a_device_failure_says_its_kind(self):
        r = report_for(action(4), Failure(UnreachableError("no route to bmc")))
        self.assertEqual(r, Report(4, "failed", error="no route to bmc",
                                   error_kind="unreachable"))

    def test_a_bug_is_reported_as_internal(self):
        r = report_for(action(4), Failure(ZeroDivisionError("oops")))
        self.assertEqual(r, Report(4, "failed", error="oops", error_kind="internal"))

    def test_a_failed_joined_request_still_names_the_leader(self):
        r = report_for(action(5, "4"), Failure(UnreachableError("x")))
        self.assertEqual((r.outcome, r.coalesced_into, r.superseded_by), ("failed", 4, 0))
        r = report_for(action(5), Failure(UnreachableError("x")))
        self.assertEqual(r.coalesced_into, 0)


class Setup:
    def setUp(self):
        self.clock = task.Clock()
        self.executor = ConfiguredFakeExecutor(auto_quiesce=True)
        self.registry = PowerActionRegistry(self.executor, self.clock, cancel_timeout=5)
        self.reports = []
        self.pserv = Pserv(self.registry, self.executor, self.reports.append)
        self.pserv.epoch = 1  # as if it held a lease
        self.pserv.epoch = 1  # the lease we hold, where the pserv keeps one


class DispatchTests(Setup, unittest.TestCase):
    def test_dispositions(self):
        self.assertEqual(self.pserv.dispatch(1, "n1", "off", POWER), ("started", 0))
        self.assertEqual(self.pserv.dispatch(2, "n1", "off", POWER), ("coalesced", 1))
        self.assertEqual(self.pserv.dispatch(3, "n1", "on", POWER), ("waiting", 0))
        self.assertEqual(self.pserv.dispatch(2, "n1", "off", POWER), ("known", 0))
        self.assertEqual(self.pserv.dispatch(4, "n2", "query", POWER), ("started", 0))
        self.assertEqual(self.pserv.in_flight(), 4)

    def test_an_operation_that_runs_at_once_is_started_not_waiting(self):
        # A query beside a change: the node has activity, but not ours waiting.
        self.pserv.dispatch(1, "n1", "off", POWER)
        self.assertEqual(self.pserv.dispatch(2, "n1", "query", POWER), ("started", 0))


class ShutdownTests(Setup, unittest.TestCase):
    def test_shutdown_cancellations_are_not_reported(self):
        self.pserv.dispatch(1, "n1", "off", POWER)
        self.pserv.dispatch(2, "n1", "on", POWER)
        self.pserv.shutdown()
        self.assertEqual(self.reports, [])
        self.assertEqual(self.pserv.in_flight(), 0)

    def test_other_outcomes_are_still_reported_while_stopping(self):
        self.pserv.shutdown()
        self.pserv.dispatch(1, "n1", "off", POWER)
        self.executor.finish("1", PowerState.OFF)
        self.assertEqual([(r.operation_id, r.outcome) for r in self.reports],
                         [(1, "succeeded")])


class RememberTests(Setup, unittest.TestCase):
    def finish(self, op):
        self.pserv.dispatch(op, "n1", "query", POWER)
        self.executor.finish(str(op), PowerState.ON)

    def test_the_last_ten_thousand_outcomes_are_remembered(self):
        for op in range(1, 10_002):
            self.finish(op)
        # op 1 is forgotten: a re-send runs again; op 2 is still known.
        self.assertEqual(self.pserv.dispatch(2, "n1", "query", POWER), ("known", 0))
        self.assertEqual(self.pserv.dispatch(1, "n1", "query", POWER), ("started", 0))


class ManualFallbackTests(unittest.TestCase):
    def test_confirming_the_fallback_after_the_first_agent_gave_up(self):
        clock = task.Clock()
        executor_cat = DriverCatalogue([ManualDriverType(clock, default_timeout=60)])
        from powerctl.pserv.executor import DriverExecutor

        executor = DriverExecutor(executor_cat)
        registry = PowerActionRegistry(executor, clock)
        reports = []
        pserv = Pserv(registry, executor, reports.append)
        pserv.epoch = 1
        pserv.epoch = 1  # the lease we hold, where the pserv keeps one
        power = {"mode": "sequential", "agents": [
            {"driver": "manual", "label": "first", "params": {"label": "rack 1", "timeout": 10}},
            {"driver": "manual", "label": "second", "params": {"label": "rack 2"}},
        ]}
        pserv.dispatch(1, "hand", "on", power)
        clock.advance(10)  # the first agent's confirmation expires: the second asks
        self.assertEqual(reports, [])
        self.assertEqual(pserv.confirm(1, "on"), 1)
        [report] = reports
        self.assertEqual((report.outcome, report.agent), ("succeeded", "second"))


class ReportFailureTests(Setup, unittest.TestCase):
    def test_a_report_that_fails_is_logged_and_the_outcome_kept(self):
        def broken(report):
            raise ConnectionError("region link lost")

        self.pserv._report = broken
        self.pserv.dispatch(1, "n1", "off", POWER)
        self.executor.finish("1", PowerState.OFF)
        # Logged at once (not left as an unhandled error in a Deferred)...
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        # ...and the outcome is still known, for the region's re-send.
        self.pserv._report = self.reports.append
        self.assertEqual(self.pserv.dispatch(1, "n1", "off", POWER), ("known", 0))
        self.assertEqual([r.outcome for r in self.reports], ["succeeded"])


class ConfigureTests(unittest.TestCase):
    def test_configure_says_whether_the_configuration_is_usable(self):
        from powerctl.drivers.catalogue import DriverCatalogue as Catalogue
        from powerctl.pserv.executor import DriverExecutor
        from tests.test_executor import FakeType, single

        executor = DriverExecutor(Catalogue([FakeType()]))
        pserv = Pserv(PowerActionRegistry(executor, task.Clock()), executor, [].append)
        pserv.epoch = 1
        self.assertTrue(pserv.configure("n1", single(1)))
        self.assertFalse(pserv.configure("n2", {"agents": []}))
        self.assertEqual(executor.known_nodes(), ["n1"])


class ForgetTests(unittest.TestCase):
    def test_forget_lists_only_the_operations_it_cancelled(self):
        clock = task.Clock()
        executor = ConfiguredFakeExecutor(auto_quiesce=False)
        registry = PowerActionRegistry(executor, clock, cancel_timeout=5)
        reports = []
        pserv = Pserv(registry, executor, reports.append)
        pserv.epoch = 1
        pserv.dispatch(1, "n1", "on", POWER)
        pserv.dispatch(2, "n1", "off", POWER)  # supersedes 1, which is stopping
        d = pserv.forget_node("n1", "node n1 deleted")
        executor.quiesce("1")
        self.assertEqual(self.successResultOf(d), [2])  # 1 ended superseded, not cancelled
        self.assertEqual(sorted((r.operation_id, r.outcome) for r in reports),
                         [(1, "superseded"), (2, "cancelled")])


class MixedAgentsConfirmTests(unittest.TestCase):
    def test_a_manual_agent_beside_an_automatic_one_can_be_confirmed(self):
        from powerctl.pserv.executor import DriverExecutor
        from tests.test_executor import FakeType

        clock = task.Clock()
        executor = DriverExecutor(DriverCatalogue([FakeType(),
                                                   ManualDriverType(clock, default_timeout=60)]))
        registry = PowerActionRegistry(executor, clock)
        reports = []
        pserv = Pserv(registry, executor, reports.append)
        pserv.epoch = 1
        power = {"mode": "concurrent", "agents": [
            {"driver": "fake", "params": {"id": 1}},
            {"driver": "manual", "params": {"label": "psu b"}},
        ]}
        pserv.dispatch(1, "n1", "on", power)  # the fake agent is done; the manual one waits
        self.assertEqual(reports, [])
        self.assertEqual(pserv.confirm(1, "on"), 1)
        self.assertEqual([(r.operation_id, r.outcome) for r in reports], [(1, "succeeded")])
