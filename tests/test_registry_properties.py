"""
Property tests of the registry over random interleavings of requests,
completions, failures, cancellations and slow stops.
"""

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

from powerctl.power import Action, PowerState
from powerctl.registry import IActionExecutor, PowerAction, PowerActionRegistry

NODES = ("a", "b")


@implementer(IActionExecutor)
class CheckingExecutor:
    """
    An executor that asserts, at every start, that the registry keeps its
    promises: no second change on a node whose previous change is still
    running or not yet quiet, and nothing that was already settled starts.
    """

    def __init__(self, settled):
        self.settled = settled  # op -> number of times its Deferred fired
        self.live = {n: set() for n in NODES}  # changes not over yet
        self.running = []  # (action, Deferred)
        self.quiet = []  # (action, Deferred)
        self.started = {n: [] for n in NODES}  # changing actions, in order
        self.violations = []

    def execute(self, action):
        op = action.operation_id
        if self.settled.get(op):
            self.violations.append(f"{op} started after it was settled")
        if action.action.changes_power:
            if self.live[action.node]:
                self.violations.append(
                    f"{op} started while {self.live[action.node]} in play")
            self.live[action.node].add(op)
            self.started[action.node].append(action)

        def cancelled(d):
            self.running[:] = [(a, x) for a, x in self.running if x is not d]

        d = defer.Deferred(cancelled)
        self.running.append((action, d))
        return d

    def quiesced(self, action):
        d = defer.Deferred()
        d.addCallback(lambda _: self.live[action.node].discard(action.operation_id))
        self.quiet.append((action, d))
        return d

    def finish(self, index, ok):
        action, d = self.running.pop(index % len(self.running))
        self.live[action.node].discard(action.operation_id)
        if ok:
            d.callback(PowerState.ON if action.action.target is None else action.action.target)
        else:
            d.errback(RuntimeError("device failed"))

    def quiesce(self, index):
        _, d = self.quiet.pop(index % len(self.quiet))
        d.callback(None)


requests = st.tuples(st.just("request"), st.sampled_from(NODES), st.sampled_from(list(Action)))
steps = st.lists(
    st.one_of(
        requests, requests, requests,  # weighted: requests are what interleave
        st.tuples(st.just("finish"), st.integers(0, 7), st.booleans()),
        st.tuples(st.just("quiesce"), st.integers(0, 7)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.floats(0, 5)),
    ),
    max_size=60,
)


class RegistryPropertyTests(unittest.TestCase):
    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps)
    def test_invariants_hold_for_any_interleaving(self, script):
        clock = task.Clock()
        fired = {}
        executor = CheckingExecutor(fired)
        registry = PowerActionRegistry(executor, clock, cancel_timeout=10**9)
        actions = []
        last_change = {}  # node -> (action, withdrawn by its caller?)

        def record(result, op):
            fired[op] = fired.get(op, 0) + 1
            return None  # failures are expected outcomes here

        for n, step in enumerate(script):
            kind = step[0]
            if kind == "request":
                a = PowerAction(node=step[1], action=step[2], operation_id=f"op{n}")
                registry.submit(a).addBoth(record, a.operation_id)
                actions.append(a)
                if a.action.changes_power:
                    last_change[a.node] = [a, False]
            elif kind == "finish" and executor.running:
                executor.finish(step[1], step[2])
            elif kind == "quiesce" and executor.quiet:
                executor.quiesce(step[1])
            elif kind == "cancel" and actions:
                a = actions[step[1] % len(actions)]
                if a.node in last_change and last_change[a.node][0] is a and not a.deferred.called:
                    last_change[a.node][1] = True
                a.cancel()
            elif kind == "advance":
                clock.advance(step[1])
            self.assertEqual(executor.violations, [])
            self.assertTrue(all(c == 1 for c in fired.values()), fired)

        # Let everything finish successfully.
        for _ in range(1000):
            if executor.quiet:
                executor.quiesce(0)
            elif executor.running:
                executor.finish(0, True)
            else:
                break
        self.assertEqual(executor.violations, [])
        self.assertEqual({a.operation_id: 1 for a in actions}, fired)
        self.assertEqual(registry.activity(), [])
        for node, (action, withdrawn) in last_change.items():
            if not withdrawn:
                self.assertEqual(executor.started[node][-1].action, action.action)
