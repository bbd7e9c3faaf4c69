"""
Registry edges the scenario tests leave open, each found by mutation
testing (``make mutate``): waiting for an unknown node to be idle, the
lead of a waiting job handed on with several joined callers, and the
default policy being a real :class:`IRankPolicy`.
"""

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from powerctl.power import Action, PowerState
from powerctl.registry import IRankPolicy, RankPolicy
from tests.test_registry import Harness


class IdleTests(unittest.TestCase):
    def test_a_node_never_seen_is_idle_at_once(self):
        # pserv's delete/move waits on this; an unknown node must not hang it.
        h = Harness(self)
        self.successResultOf(h.registry.idle("never-seen"))
        self.successResultOf(h.registry.cancel_node("never-seen"))

    def test_a_busy_node_is_idle_once_its_work_ended(self):
        h = Harness(self)
        h.request("op1", Action.ON)
        idle = h.registry.idle("n1")
        self.assertNoResult(idle)
        h.executor.finish("op1", PowerState.ON)
        self.successResultOf(idle)

    def test_a_caller_may_stop_waiting_for_idle(self):
        from twisted.internet import defer

        h = Harness(self)
        h.request("op1", Action.ON)
        idle = h.registry.idle("n1")
        other = h.registry.idle("n1")
        idle.cancel()
        self.failureResultOf(idle, defer.CancelledError)
        # The node going idle later must not trip over the abandoned wait:
        # whoever still waits is told.
        h.executor.finish("op1", PowerState.ON)
        self.assertEqual(h.result("op1").state, PowerState.ON)
        self.successResultOf(other)
        self.assertEqual(h.registry.activity(), [])


class LeadHandOverTests(unittest.TestCase):
    def test_every_remaining_joined_caller_follows_the_new_leader(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        a2 = h.request("op2", Action.ON)  # waits behind off
        h.request("op3", Action.ON)
        h.request("op4", Action.ON)
        a2.cancel()
        [act] = h.registry.activity()
        self.assertEqual((act.waiting.operation_id, act.waiting.joined), ("op3", ("op4",)))
        h.executor.finish("op1", PowerState.OFF)
        h.executor.finish("op3", PowerState.ON)
        self.assertEqual(h.result("op3").coalesced_into, None)
        self.assertEqual(h.result("op4").coalesced_into, "op3")


class PolicyTests(unittest.TestCase):
    def test_the_default_policy_provides_the_interface(self):
        self.assertTrue(verifyObject(IRankPolicy, RankPolicy()))


class ActivityStoppingTests(unittest.TestCase):
    def test_activity_tells_a_job_being_stopped_from_one_running(self):
        h = Harness(self, executor={"auto_quiesce": False})
        h.request("op1", Action.ON)
        [act] = h.registry.activity()
        self.assertFalse(act.running.stopping)
        h.request("op2", Action.OFF)  # outranks: op1 is stopped
        [act] = h.registry.activity()
        self.assertTrue(act.running.stopping)
        self.assertEqual(act.waiting.operation_id, "op2")


class CancelActionTests(unittest.TestCase):
    def test_cancelling_an_action_that_already_ended_is_a_no(self):
        h = Harness(self)
        a1 = h.request("op1", Action.ON)
        h.executor.finish("op1", PowerState.ON)
        self.assertFalse(h.registry.cancel_action(a1))
        self.assertEqual(h.result("op1").state, PowerState.ON)

    def test_cancelling_an_action_of_an_unknown_node_is_a_no(self):
        from powerctl.registry import PowerAction

        h = Harness(self)
        stray = PowerAction(node="elsewhere", action="on", operation_id="x")
        self.assertFalse(h.registry.cancel_action(stray))

    def test_a_power_action_provides_its_interface(self):
        from powerctl.registry import IPowerAction, PowerAction

        self.assertTrue(verifyObject(IPowerAction, PowerAction(node="n", action="on",
                                                               operation_id="1")))


class BusyTests(unittest.TestCase):
    def test_only_changes_make_a_node_busy_for_the_poller(self):
        h = Harness(self)
        self.assertFalse(h.registry.busy("n1"))
        h.request("q1", Action.QUERY)
        self.assertFalse(h.registry.busy("n1"))  # a query alone: still polled
        h.request("op1", Action.OFF)
        self.assertTrue(h.registry.busy("n1"))
        h.request("op2", Action.ON)  # waits
        h.executor.finish("op1", PowerState.OFF)
        self.assertTrue(h.registry.busy("n1"))  # the waiting one now runs
        h.executor.finish("op2", PowerState.ON)
        self.assertFalse(h.registry.busy("n1"))
