"""
The region's coordination glue with a fake store and a Clock (no
database), found by mutation testing (``make mutate``): what an outcome
report does to the node's recorded state, when a silent pserv is dropped,
how often the region looks for silent ones, the per-cluster activity
count, and the bounded drain at stop.
"""

import gc

import attrs
from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.region.core import Region
from powerctl.region.errors import NotFound
from powerctl.testing.region import FakeLockouts


@attrs.define
class Recorded:
    changed: bool
    op: dict


class FakeStore:
    """Both kinds the region's reports touch: ``store.ops`` and ``store.nodes``."""

    def __init__(self, op=None, changed=True, node_exists=True):
        self.ops = self.nodes = self
        self.lockouts = FakeLockouts()  # issue 10: none locked out
        self.op = op or {"id": 1, "node": "n1", "action": "off"}
        self.changed = changed
        self.node_exists = node_exists
        self.outcomes = []
        self.states = []

    async def record_outcome(self, op_id, outcome, **kwargs):
        if op_id != self.op["id"]:
            raise NotFound(f"power operation {op_id} does not exist")
        self.outcomes.append((op_id, outcome, kwargs))
        return Recorded(self.changed, self.op)

    async def record_power_state(self, node, state, **kwargs):
        if not self.node_exists:
            raise NotFound(node)
        self.states.append((node, state, kwargs))
        return {}


def region(store=None, clock=None, **kwargs):
    return Region("r1", store or FakeStore(), b"secret", clock or task.Clock(), **kwargs)


def run(testcase, coro):
    return testcase.successResultOf(defer.ensureDeferred(coro))


class OutcomeTests(unittest.TestCase):
    """
    Region.outcome hands the report to the store, which writes it with the
    node state it implies in one transaction (which state: test_store.py
    OutcomeStateTests); the region answers whether it changed anything.
    """

    def test_the_report_goes_to_the_store_whole(self):
        store = FakeStore()
        self.assertTrue(run(self, region(store).outcome(
            1, "succeeded", "off", "bmc", None, None, None, "p1", epoch=3, detail={"level": 1})))
        self.assertEqual(store.outcomes, [(1, "succeeded", {
            "observed_state": "off", "agent": "bmc", "error": None, "coalesced_into": None,
            "superseded_by": None, "pserv": "p1", "epoch": 3, "detail": {"level": 1}})])

    def test_a_report_that_changes_nothing_answers_false(self):
        store = FakeStore(changed=False)
        self.assertFalse(run(self, region(store).outcome(
            1, "succeeded", "on", None, None, None, None, "p1")))

    def test_an_unknown_operation_is_not_an_error(self):
        store = FakeStore()
        self.assertFalse(run(self, region(store).outcome(
            99, "succeeded", "on", None, None, None, None, "p1")))
        self.assertEqual(store.outcomes, [])


class FakeTransport:
    def __init__(self):
        self.aborted = False
        self.closed = False

    def abortConnection(self):
        self.aborted = True

    def loseConnection(self):
        self.closed = True


@attrs.define(eq=False)
class FakeProtocol:
    pserv: str
    cluster: str
    last_heard: float = 0.0
    in_flight: int = 0
    transport: FakeTransport = attrs.Factory(FakeTransport)
    answer: object = None  # what callRemote answers; None: never

    def callRemote(self, command, **kwargs):
        if self.answer is None:
            return defer.Deferred()
        return defer.succeed(self.answer)


class SilentPservTests(unittest.TestCase):
    def test_a_pserv_is_dropped_only_once_silent_longer_than_the_timeout(self):
        clock = task.Clock()
        r = region(clock=clock, heartbeat_timeout=30.0)
        p = FakeProtocol("p1", "c1", last_heard=0.0)
        r.directory.add(p)
        clock.advance(30)
        r.drop_silent_pservs()
        self.assertFalse(p.transport.aborted)  # exactly the timeout: still fine
        clock.advance(0.5)
        r.drop_silent_pservs()
        self.assertTrue(p.transport.aborted)

    def test_the_check_runs_every_third_of_the_timeout(self):
        clock = task.Clock()
        r = region(clock=clock, heartbeat_timeout=30.0)
        p = FakeProtocol("p1", "c1", last_heard=0.0)
        r.directory.add(p)
        r.reaper.startService()
        clock.advance(30)
        self.assertFalse(p.transport.aborted)
        clock.advance(10)  # the next round, at 40 s
        self.assertTrue(p.transport.aborted)
        r.reaper.stopService()

    def test_the_check_runs_at_most_once_a_second(self):
        clock = task.Clock()
        r = region(clock=clock, heartbeat_timeout=0.3)
        r.reaper.startService()
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [1.0])
        r.reaper.stopService()


class ActivityAndStopTests(unittest.TestCase):
    def test_activity_adds_up_actions_per_cluster(self):
        r = region()
        for p in (FakeProtocol("p1", "c1", in_flight=2), FakeProtocol("p2", "c1", in_flight=3),
                  FakeProtocol("p3", "c2", in_flight=0)):
            r.directory.add(p)
        self.assertEqual(r.activity(), {"c1": 5, "c2": 0})

    def test_stop_closes_every_connection_and_stops_looking(self):
        clock = task.Clock()
        r = region(clock=clock)
        p = FakeProtocol("p1", "c1")
        r.directory.add(p)
        r.reaper.startService()
        r.stop()
        r.reaper.stopService()
        self.assertTrue(r.stopping)
        self.assertTrue(p.transport.closed)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_drain_waits_for_tracked_work_but_not_forever(self):
        clock = task.Clock()
        r = region(clock=clock)
        self.successResultOf(r.drain())
        work = r.track(defer.Deferred())
        d = r.drain(timeout=5.0)
        self.assertNoResult(d)
        work.callback("done")
        self.successResultOf(d)
        self.assertEqual(self.successResultOf(work), "done")
        late = r.track(defer.Deferred())  # ends only after the drain gave up
        d = r.drain()  # the default bound: 5 s
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        late.callback("late")  # no AlreadyCalledError from the abandoned wait
        self.assertEqual(self.successResultOf(late), "late")
        # The abandoned waits leave no unhandled CancelledError behind to be
        # blamed on whichever test runs when they are garbage-collected.
        del r, d, work, late
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(defer.CancelledError), [])


class QuiesceTests(unittest.TestCase):
    def test_quiescing_a_node_waits_ten_seconds_for_a_pserv_that_does_not_answer(self):
        clock = task.Clock()
        r = region(clock=clock)
        r.directory.add(FakeProtocol("p1", "c1", answer={"cancelled": ["7", "9"]}))
        r.directory.add(FakeProtocol("p2", "c1"))  # never answers
        d = defer.ensureDeferred(r.quiesce_node({"name": "n1", "cluster": "c1"}, "deleted"))
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), {7, 9})
        self.assertEqual(clock.getDelayedCalls(), [])
