"""
The registry rules (the docstring of :mod:`powerctl.registry.registry`),
one scenario each, with a fake executor and a Clock -- no sockets.
"""

from twisted.internet import task
from twisted.python.failure import Failure
from twisted.trial import unittest

from powerctl.power import Action, PowerState
from powerctl.registry import (
    Cancelled, Observed, Outcome, PowerAction, PowerActionRegistry, RankPolicy,
    Superseded,
)
from tests.fakes import FakeExecutor


class Harness:
    def __init__(self, testcase, **kwargs):
        self.clock = task.Clock()
        self.executor = FakeExecutor(**kwargs.pop("executor", {}))
        self.registry = PowerActionRegistry(self.executor, self.clock, **kwargs)
        self.results = {}
        self.counts = {}

    def request(self, op, action, node="n1"):
        a = PowerAction(node=node, action=action, operation_id=op)
        d = self.registry.submit(a)

        def record(result):
            self.counts[op] = self.counts.get(op, 0) + 1
            self.results[op] = result

        d.addBoth(record)
        return a

    def result(self, op):
        return self.results[op]

    def failure_type(self, op):
        r = self.results[op]
        return r.type if isinstance(r, Failure) else None


class SingleActionTests(unittest.TestCase):
    def test_runs_and_reports_outcome(self):
        h = Harness(self)
        h.request("op1", Action.ON)
        self.assertEqual(h.executor.started_ops(), ["op1"])
        h.executor.finish("op1", Observed(PowerState.ON, agent="bmc-a"))
        self.assertEqual(
            h.result("op1"),
            Outcome("op1", Action.ON, PowerState.ON, agent="bmc-a", coalesced_into=None),
        )
        self.assertEqual(h.registry.activity(), [])

    def test_plain_power_state_result_accepted(self):
        h = Harness(self)
        h.request("op1", "off")
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.result("op1").state, PowerState.OFF)

    def test_driver_failure_reaches_the_caller(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        h.executor.fail("op1", RuntimeError("bmc said no"))
        self.assertEqual(h.failure_type("op1"), RuntimeError)

    def test_resubmitting_an_action_is_refused(self):
        h = Harness(self)
        a = h.request("op1", Action.ON)
        self.assertRaises(ValueError, h.registry.submit, a)

    def test_nodes_are_independent(self):
        h = Harness(self)
        h.request("a1", Action.ON, node="a")
        h.request("b1", Action.ON, node="b")
        self.assertEqual(h.executor.started_ops(), ["a1", "b1"])


class CoalesceTests(unittest.TestCase):
    def test_identical_change_joins_the_one_in_play(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        joined = h.request("op2", Action.OFF)
        self.assertEqual(joined.coalesced_into, "op1")
        self.assertEqual(h.executor.started_ops(), ["op1"])
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.result("op2").coalesced_into, "op1")
        self.assertEqual(h.result("op2").operation_id, "op2")
        self.assertEqual(h.result("op1").coalesced_into, None)

    def test_joined_caller_gets_the_same_failure(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        h.request("op2", Action.OFF)
        h.executor.fail("op1", RuntimeError("boom"))
        self.assertEqual(h.failure_type("op1"), RuntimeError)
        self.assertEqual(h.failure_type("op2"), RuntimeError)

    def test_identical_change_joins_the_waiting_one(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        h.request("op2", Action.ON)  # waits: on does not outrank off
        h.request("op3", Action.ON)
        self.assertEqual(h.registry.activity()[0].waiting.joined, ("op3",))
        h.executor.finish("op1", PowerState.OFF)
        h.executor.finish("op2", PowerState.ON)
        self.assertEqual(h.result("op3").coalesced_into, "op2")
        self.assertEqual(h.executor.started_ops(), ["op1", "op2"])

    def test_joining_the_one_in_play_supersedes_the_waiting_one(self):
        # off runs, on waits, off again: the last request is off, so the
        # waiting on must never run.
        h = Harness(self)
        h.request("op1", Action.OFF)
        h.request("op2", Action.ON)
        h.request("op3", Action.OFF)
        err = h.result("op2").value
        self.assertIsInstance(err, Superseded)
        self.assertEqual(err.by, "op3")
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.executor.started_ops(), ["op1"])
        self.assertEqual(h.result("op3").coalesced_into, "op1")

    def test_queries_coalesce_with_each_other(self):
        h = Harness(self)
        h.request("q1", Action.QUERY)
        h.request("q2", Action.QUERY)
        self.assertEqual(h.executor.started_ops(), ["q1"])
        h.executor.finish("q1", PowerState.ON)
        self.assertEqual(h.result("q2").coalesced_into, "q1")
        self.assertEqual(h.result("q2").state, PowerState.ON)


class SupersedeTests(unittest.TestCase):
    def test_off_supersedes_on_after_cancellation_finished(self):
        h = Harness(self, executor={"auto_quiesce": False})
        h.request("op1", Action.ON)
        h.request("op2", Action.OFF)
        self.assertEqual(h.executor.cancelled, ["op1"])
        # The device is still busy with op1: off must not start yet.
        self.assertEqual(h.executor.started_ops(), ["op1"])
        self.assertNotIn("op1", h.results)
        h.executor.quiesce("op1")
        self.assertEqual(h.executor.started_ops(), ["op1", "op2"])
        err = h.result("op1").value
        self.assertIsInstance(err, Superseded)
        self.assertEqual((err.operation_id, err.by), ("op1", "op2"))

    def test_cancellation_wait_is_bounded(self):
        h = Harness(self, executor={"auto_quiesce": False}, cancel_timeout=5)
        h.request("op1", Action.ON)
        h.request("op2", Action.OFF)
        h.clock.advance(4.9)
        self.assertEqual(h.executor.started_ops(), ["op1"])
        h.clock.advance(0.2)
        self.assertEqual(h.executor.started_ops(), ["op1", "op2"])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.flushLoggedErrors()

    def test_default_rank_order(self):
        order = [Action.ON, Action.CYCLE, Action.SOFT_OFF, Action.OFF]
        policy = RankPolicy()
        for i, low in enumerate(order):
            for high in order[i + 1:]:
                self.assertTrue(policy.outranks(high, low), (high, low))
                self.assertFalse(policy.outranks(low, high), (low, high))
            self.assertFalse(policy.outranks(low, low))

    def test_lower_rank_waits_and_runs_after(self):
        h = Harness(self)
        h.request("op1", Action.SOFT_OFF)
        h.request("op2", Action.CYCLE)
        self.assertEqual(h.executor.cancelled, [])
        self.assertEqual(h.registry.activity()[0].waiting.operation_id, "op2")
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.executor.started_ops(), ["op1", "op2"])

    def test_at_most_one_waits_newest_wins(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        h.request("op2", Action.ON)
        h.request("op3", Action.CYCLE)
        h.request("op4", Action.ON)
        self.assertEqual(h.result("op2").value.by, "op3")
        self.assertEqual(h.result("op3").value.by, "op4")
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.executor.started_ops(), ["op1", "op4"])

    def test_joined_callers_of_a_superseded_action_are_told(self):
        h = Harness(self)
        h.request("op1", Action.ON)
        h.request("op2", Action.ON)
        h.request("op3", Action.OFF)
        self.assertEqual(h.result("op1").value.by, "op3")
        self.assertEqual(h.result("op2").value.by, "op3")
        self.assertEqual(h.result("op2").value.operation_id, "op2")

    def test_request_while_stopping_replaces_the_one_waiting(self):
        h = Harness(self, executor={"auto_quiesce": False})
        h.request("op1", Action.ON)
        h.request("op2", Action.OFF)  # supersedes op1, waits for quiet
        h.request("op3", Action.ON)  # newest: replaces op2
        self.assertEqual(h.result("op2").value.by, "op3")
        h.executor.quiesce("op1")
        self.assertEqual(h.executor.started_ops(), ["op1", "op3"])

    def test_custom_policy(self):
        policy = RankPolicy({Action.ON: 50, Action.OFF: 1, Action.SOFT_OFF: 2, Action.CYCLE: 3,
                             Action.FENCE: 4})
        h = Harness(self, policy=policy)
        h.request("op1", Action.OFF)
        h.request("op2", Action.ON)
        self.assertEqual(h.executor.cancelled, ["op1"])
        self.assertEqual(h.executor.started_ops(), ["op1", "op2"])

    def test_policy_must_rank_every_change(self):
        self.assertRaises(ValueError, RankPolicy, {Action.ON: 1})


class QueryTests(unittest.TestCase):
    def test_query_never_cancels_a_change(self):
        h = Harness(self)
        h.request("op1", Action.ON)
        h.request("q1", Action.QUERY)
        self.assertEqual(h.executor.cancelled, [])
        self.assertEqual(h.executor.started_ops(), ["op1", "q1"])
        self.assertTrue(h.registry.busy("n1"))

    def test_change_does_not_cancel_a_query(self):
        h = Harness(self)
        h.request("q1", Action.QUERY)
        h.request("op1", Action.OFF)
        self.assertEqual(h.executor.cancelled, [])
        h.executor.finish("q1", PowerState.ON)
        self.assertEqual(h.result("q1").state, PowerState.ON)


class CancelTests(unittest.TestCase):
    def test_caller_cancels_waiting_action(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        a2 = h.request("op2", Action.ON)
        a2.cancel()
        self.assertIsInstance(h.result("op2").value, Cancelled)
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.executor.started_ops(), ["op1"])

    def test_cancelling_the_deferred_is_the_same(self):
        h = Harness(self)
        a1 = h.request("op1", Action.OFF)
        a1.deferred.cancel()
        self.assertIsInstance(h.result("op1").value, Cancelled)
        self.assertEqual(h.executor.cancelled, ["op1"])
        self.assertEqual(h.registry.activity(), [])

    def test_one_joined_caller_leaving_keeps_the_work(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        a2 = h.request("op2", Action.OFF)
        a2.cancel()
        self.assertEqual(h.executor.cancelled, [])
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.result("op1").state, PowerState.OFF)
        self.assertEqual(h.counts, {"op1": 1, "op2": 1})

    def test_leader_leaving_keeps_the_work_for_the_joined(self):
        h = Harness(self)
        a1 = h.request("op1", Action.OFF)
        h.request("op2", Action.OFF)
        a1.cancel()
        self.assertEqual(h.executor.cancelled, [])
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.result("op2").coalesced_into, "op1")

    def test_cancel_node_and_cancel_all(self):
        h = Harness(self)
        h.request("a1", Action.ON, node="a")
        h.request("a2", Action.OFF, node="a")
        h.request("b1", Action.ON, node="b")
        h.request("b2", Action.QUERY, node="b")
        h.registry.cancel_all()
        self.assertEqual(sorted(h.counts), ["a1", "a2", "b1", "b2"])
        for op in ("a2", "b1", "b2"):
            self.assertIsInstance(h.result(op).value, Cancelled, op)
        self.assertIsInstance(h.result("a1").value, Superseded)
        self.assertEqual(h.registry.activity(), [])

    def test_cancel_before_submit(self):
        a = PowerAction(node="n", action="on", operation_id="x")
        a.cancel()
        return self.assertFailure(a.deferred, Cancelled)

    def test_late_result_of_stopped_execution_is_ignored(self):
        h = Harness(self, executor={"auto_quiesce": False})
        h.request("op1", Action.ON)
        h.request("op2", Action.OFF)
        h.executor.quiesce("op1")
        h.executor.finish("op2", PowerState.OFF)
        self.assertEqual(h.counts, {"op1": 1, "op2": 1})


class ActivityTests(unittest.TestCase):
    def test_lists_running_waiting_and_query(self):
        h = Harness(self)
        h.clock.advance(100)
        h.request("op1", Action.OFF)
        h.request("op2", Action.OFF)
        h.request("op3", Action.ON)
        h.request("q1", Action.QUERY)
        [act] = h.registry.activity()
        self.assertEqual(act.node, "n1")
        self.assertEqual(
            (act.running.operation_id, act.running.joined, act.running.started_at),
            ("op1", ("op2",), 100),
        )
        self.assertEqual(act.waiting.operation_id, "op3")
        self.assertIsNone(act.waiting.started_at)
        self.assertEqual(act.query.operation_id, "q1")
        self.assertEqual(h.registry.activity("other"), [])

    def test_unknown_action_name_is_refused(self):
        self.assertRaises(ValueError, PowerAction, node="n", action="reboot", operation_id="x")


class LeaderTests(unittest.TestCase):
    def test_waiting_leader_leaving_hands_the_lead_on(self):
        h = Harness(self)
        h.request("op1", Action.OFF)
        a2 = h.request("op2", Action.ON)
        h.request("op3", Action.ON)
        a2.cancel()
        h.executor.finish("op1", PowerState.OFF)
        self.assertEqual(h.executor.started_ops(), ["op1", "op3"])
        h.executor.finish("op3", PowerState.ON)
        self.assertEqual(h.result("op3").coalesced_into, None)
