"""
The pserv's brain and the registry's operator hooks, without sockets: a
Clock, the registry's fake executor, and the real manual driver.

Covers what a node's life needs from the pserv: forgetting a node (work
cancelled, configuration dropped only once the device is quiet), an
operator's cancel (reported only once quiet), a manual confirmation, and a
re-sent operation that already finished (re-reported, never re-run).
"""

from twisted.internet import task
from twisted.trial import unittest
from zope.interface import implementer

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.manual import ManualDriverType
from powerctl.power import Action, PowerState
from powerctl.pserv.core import NotConfirmable, Pserv
from powerctl.pserv.executor import DriverExecutor
from powerctl.registry import Cancelled, IActionExecutor, PowerAction, PowerActionRegistry
from tests.fakes import FakeExecutor

POWER = {"mode": "single", "agents": [{"driver": "fake", "params": {}}]}


@implementer(IActionExecutor)
class ConfiguredFakeExecutor(FakeExecutor):
    """The registry's fake executor plus the pserv's configuration memory."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.configs = {}

    def configure(self, node, power):
        self.configs[node] = power

    def forget(self, node):
        self.configs.pop(node, None)

    def known_nodes(self):
        return sorted(self.configs)

    def drivers(self, node):
        return []


class RegistryCancelTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.executor = FakeExecutor(auto_quiesce=False)
        self.registry = PowerActionRegistry(self.executor, self.clock, cancel_timeout=5)
        self.results = {}

    def submit(self, op, action, node="n1"):
        a = PowerAction(node=node, action=action, operation_id=op)
        self.registry.submit(a).addBoth(lambda r: self.results.__setitem__(op, r))
        return a

    def test_cancelling_the_sole_holder_settles_only_once_quiet(self):
        a = self.submit("op1", Action.ON)
        self.assertTrue(self.registry.cancel_action(a, "cancelled by carol", by="carol"))
        self.assertEqual(self.executor.cancelled, ["op1"])
        self.assertNotIn("op1", self.results)  # the device is not quiet yet
        self.executor.quiesce("op1")
        error = self.results["op1"].value
        self.assertIsInstance(error, Cancelled)
        self.assertEqual((error.reason, error.by), ("cancelled by carol", "carol"))
        self.assertEqual(self.registry.activity(), [])

    def test_cancelling_a_waiting_request_leaves_the_running_one(self):
        self.submit("op1", Action.OFF)
        waiting = self.submit("op2", Action.ON)
        self.assertTrue(self.registry.cancel_action(waiting, "no"))
        self.assertIsInstance(self.results["op2"].value, Cancelled)
        self.assertEqual(self.executor.cancelled, [])
        self.executor.finish("op1", PowerState.OFF)
        self.assertEqual(self.executor.started_ops(), ["op1"])

    def test_cancelling_a_joined_request_keeps_the_work_for_the_others(self):
        self.submit("op1", Action.OFF)
        joined = self.submit("op2", Action.OFF)
        self.assertTrue(self.registry.cancel_action(joined, "no"))
        self.assertIsInstance(self.results["op2"].value, Cancelled)
        self.assertEqual(self.executor.cancelled, [])
        self.executor.finish("op1", PowerState.OFF)
        self.assertEqual(self.results["op1"].state, PowerState.OFF)

    def test_nothing_to_cancel_when_settled_or_already_stopping(self):
        a = self.submit("op1", Action.ON)
        self.submit("op2", Action.OFF)  # supersedes op1: it is stopping
        self.assertFalse(self.registry.cancel_action(a, "late"))
        self.executor.quiesce("op1")
        self.assertFalse(self.registry.cancel_action(a, "later"))

    def test_cancel_node_fires_once_the_node_is_idle(self):
        self.submit("op1", Action.ON)
        self.submit("op2", Action.ON)
        self.submit("q", Action.QUERY)
        idle = self.registry.cancel_node("n1", "node deleted")
        self.assertFalse(idle.called)
        self.executor.quiesce("op1")
        self.assertFalse(idle.called)  # the query is still stopping
        self.executor.quiesce("q")
        self.assertTrue(idle.called)
        self.assertEqual(self.registry.activity(), [])
        self.assertTrue(self.registry.cancel_node("n1").called)  # nothing there

    def test_idle_waits_are_bounded_by_the_cancel_timeout(self):
        self.submit("op1", Action.ON)
        idle = self.registry.cancel_node("n1", "bye")
        self.clock.advance(5)
        self.assertTrue(idle.called)


class PservSetup:
    """A Pserv on a Clock and a fake executor, holding the lease ``epoch``."""

    epoch = 1

    def setUp(self):
        super().setUp()
        self.clock = task.Clock()
        self.executor = ConfiguredFakeExecutor(auto_quiesce=False)
        self.registry = PowerActionRegistry(self.executor, self.clock, cancel_timeout=5)
        self.reports = []
        self.pserv = Pserv(self.registry, self.executor, self.reports.append)
        self.pserv.epoch = self.epoch  # as if it held a lease


class PservTests(PservSetup, unittest.TestCase):

    def test_forget_node_cancels_then_forgets_once_quiet(self):
        self.pserv.dispatch(1, "n1", "on", POWER)
        self.pserv.dispatch(2, "n2", "on", POWER)
        d = self.pserv.forget_node("n1", "node n1 deleted by alice")
        self.assertFalse(d.called)
        self.assertIn("n1", self.executor.known_nodes())  # still needed to quiesce
        self.executor.quiesce("1")
        self.assertEqual(self.successResultOf(d), [1])
        self.assertEqual(self.executor.known_nodes(), ["n2"])
        [report] = self.reports
        self.assertEqual((report.operation_id, report.outcome, report.error),
                         (1, "cancelled", "node n1 deleted by alice"))

    def test_forget_of_an_idle_node_just_forgets(self):
        self.pserv.configure("n1", POWER)
        self.assertEqual(self.successResultOf(self.pserv.forget_node("n1", "x")), [])
        self.assertEqual(self.executor.known_nodes(), [])

    def test_operator_cancel_reports_after_the_device_is_quiet(self):
        self.pserv.dispatch(7, "n1", "cycle", POWER)
        settled = self.pserv.cancel(7, "cancelled by carol")
        self.assertEqual(self.reports, [])
        self.executor.quiesce("7")
        report = self.successResultOf(settled)
        self.assertEqual((report.outcome, report.error), ("cancelled", "cancelled by carol"))
        self.assertEqual(self.reports, [report])

    def test_cancel_of_an_unknown_or_finished_operation(self):
        self.assertIsNone(self.pserv.cancel(99, "x"))
        self.pserv.dispatch(8, "n1", "on", POWER)
        self.executor.finish("8", PowerState.ON)
        self.assertEqual(self.successResultOf(self.pserv.cancel(8, "x")).outcome, "succeeded")

    def test_an_older_request_arriving_after_a_newer_one_never_runs(self):
        """
        A Recover listing can race the NOTIFY of a newer request: the journal's
        order decides, so the last request wins (seen in CI: an older pending
        'off' superseded a newer 'on').
        """
        self.assertEqual(self.pserv.dispatch(3, "n1", "on", POWER), ("started", 0))
        self.assertEqual(self.pserv.dispatch(2, "n1", "off", POWER), ("known", 0))
        self.assertEqual(self.executor.started_ops(), ["3"])
        [report] = self.reports
        self.assertEqual((report.operation_id, report.outcome, report.superseded_by,
                          report.epoch), (2, "superseded", 3, self.epoch))
        # sent again, it is answered from memory; other nodes and queries are free
        self.assertEqual(self.pserv.dispatch(2, "n1", "off", POWER), ("known", 0))
        self.assertEqual(len(self.reports), 2)
        self.pserv.dispatch(1, "n2", "off", POWER)
        self.pserv.dispatch(0, "n1", "query", POWER)
        self.assertEqual(self.executor.started_ops(), ["3", "1", "0"])
        self.executor.finish("3", PowerState.ON)
        self.assertEqual(self.reports[-1].outcome, "succeeded")

    def test_a_finished_operation_sent_again_is_reported_not_run(self):
        """A region that lost the outcome re-sends it: a cycle must not reboot twice."""
        self.pserv.dispatch(5, "n1", "cycle", POWER)
        self.executor.finish("5", PowerState.ON)
        self.assertEqual(self.pserv.dispatch(5, "n1", "cycle", POWER), ("known", 0))
        self.assertEqual(self.executor.started_ops(), ["5"])
        self.assertEqual([r.outcome for r in self.reports], ["succeeded", "succeeded"])


class ManualConfirmTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.manual = ManualDriverType(self.clock, default_timeout=60)
        self.executor = DriverExecutor(DriverCatalogue([self.manual]))
        self.registry = PowerActionRegistry(self.executor, self.clock)
        self.reports = []
        self.pserv = Pserv(self.registry, self.executor, self.reports.append)
        self.pserv.epoch = 1  # as if it held a lease
        self.power = {"mode": "single", "agents": [{"driver": "manual",
                                                    "params": {"label": "rack 1"}}]}

    def test_confirmation_completes_the_operation(self):
        self.pserv.dispatch(1, "hand", "on", self.power)
        self.pserv.dispatch(2, "hand", "on", self.power)  # joins op 1
        self.assertRaises(NotConfirmable, self.pserv.confirm, 1, "off")
        self.assertEqual(self.reports, [])
        self.assertEqual(self.pserv.confirm(2, "on"), 1)
        self.assertEqual([(r.operation_id, r.outcome, r.observed_state) for r in self.reports],
                         [(1, "succeeded", "on"), (2, "succeeded", "on")])
        self.assertRaises(NotConfirmable, self.pserv.confirm, 1, "on")  # over

    def test_only_the_action_in_play_can_be_confirmed(self):
        self.pserv.dispatch(1, "hand", "off", self.power)
        self.pserv.dispatch(2, "hand", "on", self.power)  # waits behind op 1
        with self.assertRaises(NotConfirmable) as caught:
            self.pserv.confirm(2, "on")
        self.assertIn("waits for another action", str(caught.exception))
        self.assertRaises(NotConfirmable, self.pserv.confirm, 3, "on")

    def test_the_default_deadline_fails_an_unconfirmed_operation(self):
        self.pserv.dispatch(1, "hand", "off", self.power)
        self.clock.advance(59)
        self.assertEqual(self.reports, [])
        self.clock.advance(1)
        [report] = self.reports
        self.assertEqual(report.outcome, "failed")
        self.assertIn("not confirmed within 60s", report.error)

    def test_manual_nodes_are_not_queryable(self):
        self.pserv.configure("hand", self.power)
        self.assertFalse(self.executor.queryable("hand"))
        self.assertEqual(len(self.executor.drivers("hand")), 1)
