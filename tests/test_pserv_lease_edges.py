"""
The pserv under a lease, at its edges (found by mutation testing, ``make
mutate``): work sent under another epoch is refused, reports carry the
epoch their operation ran under (0 outside any), and going quiet forgets
the nodes once their devices are quiet -- except one given new work under a
new lease meanwhile -- while an operator's pending cancel still gets its
answer.
"""

from twisted.trial import unittest

from powerctl.power import Action, PowerState
from powerctl.pserv.core import NotOurs, report_for
from powerctl.registry import Outcome, PowerAction
from tests.test_pserv_core import POWER, PservSetup


class LeaseSetup(PservSetup):
    epoch = 3


class EpochTests(LeaseSetup, unittest.TestCase):
    def test_work_under_another_epoch_is_refused_and_not_started(self):
        self.assertRaises(NotOurs, self.pserv.dispatch, 1, "n1", "on", POWER, epoch=2)
        self.assertEqual((self.executor.started_ops(), self.pserv.in_flight()), ([], 0))
        self.assertEqual(self.pserv.dispatch(1, "n1", "on", POWER, epoch=3), ("started", 0))

    def test_reports_carry_the_epoch_their_operation_ran_under(self):
        self.pserv.dispatch(1, "n1", "off", POWER)
        self.executor.finish("1", PowerState.OFF)
        [report] = self.reports
        self.assertEqual((report.outcome, report.epoch), ("succeeded", 3))

    def test_a_report_outside_any_lease_says_epoch_0(self):
        action = PowerAction(node="n1", action="off", operation_id="4")
        report = report_for(action, Outcome("4", Action.OFF, PowerState.OFF))
        self.assertEqual(report.epoch, 0)


class GoQuietTests(LeaseSetup, unittest.TestCase):
    def test_going_quiet_forgets_every_node_once_quiet_and_reports_nothing(self):
        self.pserv.dispatch(1, "n1", "on", POWER)
        self.pserv.configure("n2", POWER)
        d = self.pserv.go_quiet("lease lost")
        self.assertIsNone(self.pserv.epoch)
        self.assertNoResult(d)
        self.executor.quiesce("1")
        self.successResultOf(d)
        self.assertEqual(self.executor.known_nodes(), [])
        self.assertEqual(self.reports, [])
        self.assertRaises(NotOurs, self.pserv.dispatch, 2, "n1", "on", POWER)

    def test_a_node_given_new_work_under_a_new_lease_meanwhile_is_kept(self):
        self.pserv.dispatch(1, "n1", "on", POWER)  # its device is slow to go quiet
        self.pserv.configure("n2", POWER)
        d = self.pserv.go_quiet("lease lost")
        self.pserv.epoch = 4  # a new lease before the old work is quiet
        self.pserv.dispatch(2, "n2", "off", POWER)
        self.executor.quiesce("1")
        self.successResultOf(d)
        self.assertEqual(self.executor.known_nodes(), ["n2"])  # n2 runs op 2
        self.executor.finish("2", PowerState.OFF)
        self.assertEqual([(r.operation_id, r.epoch) for r in self.reports], [(2, 4)])

    def test_an_operator_cancel_still_gets_its_answer(self):
        self.pserv.dispatch(1, "n1", "on", POWER)
        settled = self.pserv.cancel(1, "cancelled by carol")
        self.pserv.go_quiet("lease lost")
        self.executor.quiesce("1")
        self.assertEqual(self.successResultOf(settled).outcome, "cancelled")
        self.assertEqual(self.reports, [])  # not ours to report any more
