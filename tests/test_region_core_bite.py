"""
The region's coordination (:mod:`powerctl.region.core`) where mutation
testing (``make mutate``) showed no test would notice a small bug:
dispatching to a node nobody owns yet, the memory of operations this
region dispatched itself (so their NOTIFY does not dispatch them twice),
NOTIFY payloads that are not operations, an operator's cancel and what the
pservs answer to it, deleting a node, the leader's assignment round, and
recording a lost pserv.

No database and no sockets: the store, the leases and the pserv
connections are small doubles that record what the region asked of them,
and time is a :class:`twisted.internet.task.Clock`.
"""

import attrs
from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.region.core import Region
from powerctl.region.errors import Conflict, NotFound, Unavailable
from powerctl.rpc import commands
from powerctl.testing.region import FakeLockouts


@attrs.define
class Recorded:
    changed: bool
    op: dict


class FakeStore:
    """
    The kinds of the store the code under test touches, all on one object
    (``store.ops``, ``store.nodes`` and ``store.clusters`` are this store).
    ``ops`` and ``nodes`` are dicts by id and by name; every write is
    recorded in a list the tests read.
    """

    def __init__(self, ops=(), nodes=()):
        self.ops = self.nodes = self.clusters = self
        self.lockouts = FakeLockouts()  # issue 10: none locked out
        self.op_rows = {op["id"]: dict(op) for op in ops}
        self.node_rows = {node["name"]: dict(node) for node in nodes}
        self.fetched = []  # operation ids read with get()
        self.running = []  # (op id, pserv, epoch) marked running
        self.outcomes = []  # (op id, outcome, keyword arguments)
        self.operator = []  # (op id, field, by, ended_ok)
        self.disconnected = []  # (pserv, region)
        self.deleted = []

    # ops
    async def get(self, key):
        if isinstance(key, int):
            self.fetched.append(key)
            if key not in self.op_rows:
                raise NotFound(f"power operation {key} does not exist")
            return dict(self.op_rows[key])
        if key not in self.node_rows:
            raise NotFound(f"node {key} does not exist")
        return dict(self.node_rows[key])

    async def mark_running(self, op_id, pserv, epoch=None):
        self.running.append((op_id, pserv, epoch))

    async def mark_operator(self, op_id, field, by, ended_ok=False):
        self.operator.append((op_id, field, by, ended_ok))
        return dict(self.op_rows[op_id])

    async def record_outcome(self, op_id, outcome, **kwargs):
        self.outcomes.append((op_id, outcome, kwargs))
        op = self.op_rows[op_id]
        op["state"] = outcome
        return Recorded(True, dict(op))

    # nodes
    async def power_config(self, node):
        return {"mode": "single", "agents": [{"driver": "manual", "params": {}}]}

    async def circuit_config(self, node):
        return None  # on no circuit

    async def delete(self, name, by="", quiesce=None):
        node = self.node_rows.pop(name)
        cancelled = await quiesce(node)
        self.deleted.append(name)
        return {"node": name, "cancelled": sorted(cancelled)}

    # clusters
    async def pserv_disconnected(self, name, region=None):
        self.disconnected.append((name, region))
        return True


class FakeLeases:
    """
    Node owners by name (``{"owner_epoch", "handoff_epoch", "cluster"}``);
    ``on_assign[cluster]`` is the owners an assignment round of that cluster
    installs.  Records the clusters assigned and notified.
    """

    def __init__(self, owners=None, clusters=()):
        self.owners = dict(owners or {})
        self.on_assign = {}
        self.all_clusters = list(clusters)
        self.assigned = []
        self.notified = []
        self.waiting = {}  # cluster -> nodes marked for hand-over, not released yet

    async def owner(self, node):
        owner = self.owners.get(node)
        return dict(owner) if owner is not None else None

    async def assign(self, cluster):
        self.assigned.append(cluster)
        update = self.on_assign.pop(cluster, {})
        self.owners.update(update)
        assigned = {}
        for node, owner in update.items():
            assigned.setdefault(owner["owner_epoch"], []).append(node)
        return {"assigned": assigned, "handoffs": {},
                "waiting": list(self.waiting.get(cluster, ()))}

    async def clusters(self):
        return list(self.all_clusters)

    async def notify(self, cluster):
        self.notified.append(cluster)


def owner(epoch, handoff=None, cluster="c1"):
    return {"owner_epoch": epoch, "handoff_epoch": handoff, "cluster": cluster}


class FakeProtocol:
    """
    A registered pserv's connection: answers each command from
    ``answers`` (a dict, or an exception to fail with); a command it has
    no answer for never answers.  Every call is recorded.
    """

    def __init__(self, pserv, cluster="c1", epoch=None, answers=None):
        self.pserv, self.cluster, self.epoch = pserv, cluster, epoch
        self.answers = answers or {}
        self.calls = []
        self.in_flight = 0
        self.transport = None

    def callRemote(self, command, **kwargs):
        self.calls.append((command, kwargs))
        answer = self.answers.get(command)
        if answer is None:
            return defer.Deferred()
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def sent(self, command):
        return [kwargs for c, kwargs in self.calls if c is command]


def make_region(store=None, leases=None, clock=None, **kwargs):
    return Region("r1", store or FakeStore(), b"secret", clock or task.Clock(),
                  leases=leases if leases is not None else FakeLeases(), **kwargs)


PENDING = {"id": 1, "node": "n1", "action": "on", "state": "pending", "pserv": None}


class LostPservTests(unittest.TestCase):
    async def test_a_running_region_records_a_pserv_it_lost(self):
        """
        The database must hear that the pserv is gone (its nodes move once
        its lease ends); only a region that is stopping keeps quiet, since
        it dropped the connection itself.
        """
        store = FakeStore()
        region = make_region(store)
        await region.pserv_lost(FakeProtocol("p1"))
        self.assertEqual(store.disconnected, [("p1", "r1")])
        region.stop()
        await region.pserv_lost(FakeProtocol("p2"))
        self.assertEqual(store.disconnected, [("p1", "r1")])


class ReaperIntervalTests(unittest.TestCase):
    def test_silent_pservs_are_looked_for_every_third_of_the_timeout(self):
        """
        The documented period (a third of the heartbeat timeout): a pserv
        silent since 0 under a 30 s timeout is dropped at the 40 s round,
        not at 37.5 s as a quarter would do.
        """
        clock = task.Clock()
        region = make_region(clock=clock, heartbeat_timeout=30.0)
        p = FakeProtocol("p1")
        p.last_heard = 0.0
        aborted = []
        p.transport = type("T", (), {"abortConnection": lambda self: aborted.append(1)})()
        region.directory.add(p)
        region.reaper.startService()
        self.addCleanup(region.reaper.stopService)
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [10.0])
        clock.pump([2.5] * 15)  # to 37.5 s, a round at every step a quarter would take
        self.assertEqual(aborted, [])
        clock.advance(2.5)  # 40 s: the fourth round
        self.assertEqual(aborted, [1])


class DispatchOwnershipTests(unittest.TestCase):
    def setUp(self):
        self.store = FakeStore(ops=[PENDING])
        self.leases = FakeLeases()
        self.region = make_region(self.store, self.leases)
        self.pserv = FakeProtocol("p1", epoch=7,
                                  answers={commands.PowerOn: {"disposition": "started"}})
        self.region.directory.add(self.pserv)

    async def test_a_node_nobody_owns_gets_its_cluster_assigned_and_is_dispatched(self):
        """
        A new node has no owner until an assignment round: the region runs
        one at once rather than leaving the request pending until the
        leader's next round.
        """
        self.leases.owners["n1"] = owner(None)
        self.leases.on_assign["c1"] = {"n1": owner(7)}
        self.assertEqual(await self.region.dispatch(PENDING), "started")
        self.assertEqual(self.leases.assigned, ["c1"])
        self.assertEqual(self.store.running, [(1, "p1", 7)])
        self.assertEqual([k["epoch"] for k in self.pserv.sent(commands.PowerOn)], [7])

    async def test_an_owned_node_is_dispatched_without_an_assignment_round(self):
        """An assignment round per request would be a database round trip for nothing."""
        self.leases.owners["n1"] = owner(7)
        self.assertEqual(await self.region.dispatch(PENDING), "started")
        self.assertEqual(self.leases.assigned, [])

    async def test_a_node_in_handover_waits_and_is_not_reassigned(self):
        """
        A node being handed over (to a new epoch, the old one gone or not)
        is already assigned: it waits for the handover, with no new round.
        """
        for old in (None, 6):
            self.leases.owners["n1"] = owner(old, handoff=8)
            self.assertEqual(await self.region.dispatch(PENDING), "pending")
        self.assertEqual(self.leases.assigned, [])
        self.assertEqual(self.pserv.calls, [])


class NotifyTests(unittest.TestCase):
    def setUp(self):
        self.store = FakeStore(ops=[
            dict(PENDING, id=i) for i in (1, 2, 3)] + [
            dict(PENDING, id=4, state="running", pserv="p1")])
        self.leases = FakeLeases(owners={"n1": owner(7)})
        self.region = make_region(self.store, self.leases)
        self.pserv = FakeProtocol("p1", epoch=7, answers={
            commands.PowerOn: {"disposition": "started"}, commands.Refresh: {}})
        self.region.directory.add(self.pserv)

    async def test_the_notify_of_an_operation_dispatched_here_is_not_dispatched_again(self):
        """
        Every request's NOTIFY comes back to the region that sent it; only
        operations it did not dispatch itself (another region's requests)
        are read and dispatched.
        """
        await self.region.dispatch_later(self.store.op_rows[1])
        self.assertEqual(len(self.pserv.sent(commands.PowerOn)), 1)
        await self.region.notified("power_ops", "1")
        self.assertEqual(self.store.fetched, [])
        await self.region.notified("power_ops", "2")
        self.assertEqual(self.store.fetched, [2])
        self.assertEqual([k["operation_id"] for k in self.pserv.sent(commands.PowerOn)], [1, 2])

    async def test_only_pending_operations_are_dispatched_on_notify(self):
        await self.region.notified("power_ops", "4")
        self.assertEqual(self.store.fetched, [4])
        self.assertEqual(self.pserv.sent(commands.PowerOn), [])

    async def test_unknown_or_garbage_payloads_are_ignored(self):
        """
        A NOTIFY payload is whatever some region (or anyone with database
        access) sent: one that names no operation must not raise into the
        listener.
        """
        await self.region.notified("power_ops", "not-a-number")
        await self.region.notified("power_ops", "")
        await self.region.notified("power_ops", "99")
        self.assertEqual(self.store.fetched, [99])
        self.assertEqual(self.pserv.calls, [])

    async def test_an_assignments_notify_refreshes_the_clusters_pservs(self):
        other = FakeProtocol("p2", cluster="c2", answers={commands.Refresh: {}})
        self.region.directory.add(other)
        await self.region.notified("assignments", "c1")
        self.assertEqual(len(self.pserv.sent(commands.Refresh)), 1)
        self.assertEqual(other.calls, [])

    async def test_the_last_10000_operations_dispatched_here_are_remembered(self):
        """
        The memory is bounded (a long-running region would otherwise grow
        without end) but holds the 10,000 most recent: older ones are
        forgotten first.
        """
        self.leases.owners.clear()  # every dispatch ends at once: "gone"
        for i in range(1, 10_002):
            self.region.dispatch_later({"id": i, "node": "n1", "action": "on"})
        await self.region.notified("power_ops", "1")  # forgotten: read again
        await self.region.notified("power_ops", "2")  # still remembered
        await self.region.notified("power_ops", "10001")
        self.assertEqual(self.store.fetched, [1])


class AssignmentRoundTests(unittest.TestCase):
    async def test_the_leaders_round_assigns_every_cluster(self):
        leases = FakeLeases(clusters=["c1", "c2", "c3"])
        await make_region(leases=leases).assignment_round()
        self.assertEqual(leases.assigned, ["c1", "c2", "c3"])

    async def test_a_hand_over_still_waiting_is_asked_for_again_at_each_round(self):
        """An owner that missed its refresh is asked again: the hand-over cannot stall."""
        leases = FakeLeases(clusters=["c1", "c2"])
        leases.waiting["c2"] = ["n7"]
        region = make_region(leases=leases)
        refreshed = []
        region.refresh_cluster = refreshed.append
        await region.assignment_round()
        await region.assignment_round()
        self.assertEqual(refreshed, ["c2", "c2"])  # c1 has nothing to do: left alone


class DeleteNodeTests(unittest.TestCase):
    async def test_deleting_a_node_makes_every_region_refresh_its_cluster(self):
        """
        The pservs connected here are told directly (ForgetNode); an owner
        connected only to another region hears of it through the NOTIFY
        of the node's cluster.
        """
        store = FakeStore(nodes=[{"name": "n1", "cluster": "c1"}])
        leases = FakeLeases()
        region = make_region(store, leases)
        pserv = FakeProtocol("p1", answers={commands.ForgetNode: {"cancelled": ["3"]}})
        region.directory.add(pserv)
        result = await region.delete_node("n1", by="alice")
        self.assertEqual(result, {"node": "n1", "cancelled": [3]})
        self.assertEqual([k["node"] for k in pserv.sent(commands.ForgetNode)], ["n1"])
        self.assertEqual(leases.notified, ["c1"])


class CancelTests(unittest.TestCase):
    """
    ``cancel_op``: the pservs' answers decide whether the journal may say
    ``cancelled`` now, whether the operation had already ended (Conflict),
    or whether this region cannot make sure (Unavailable).
    """

    def setUp(self):
        self.store = FakeStore(ops=[PENDING], nodes=[{"name": "n1", "cluster": "c1"}])
        self.leases = FakeLeases(owners={"n1": owner(7)})
        self.region = make_region(self.store, self.leases)

    def pserv(self, name, answer, epoch=None):
        p = FakeProtocol(name, epoch=epoch, answers={commands.CancelOperation: answer})
        self.region.directory.add(p)
        return p

    async def test_pservs_that_do_not_have_the_operation_do_not_block_the_cancel(self):
        """``known: false`` says nothing about the operation: it is not an outcome."""
        self.pserv("p1", {"known": False, "outcome": ""}, epoch=7)
        self.pserv("p2", {"known": False, "outcome": ""})
        op = await self.region.cancel_op(1, by="alice")
        self.assertEqual(op["state"], "cancelled")
        self.assertEqual([(o[0], o[1], o[2]["cancelled_by"]) for o in self.store.outcomes],
                         [(1, "cancelled", "alice")])

    async def test_a_failed_answer_does_not_count_as_known(self):
        """A pserv that could not answer neither blocks nor confirms the cancel."""
        self.pserv("p1", {"known": False, "outcome": ""}, epoch=7)
        self.pserv("p2", commands.InternalError("boom"))
        op = await self.region.cancel_op(1, by="alice")
        self.assertEqual(op["state"], "cancelled")
        self.flushLoggedErrors(commands.InternalError)

    async def test_an_operation_that_ended_before_the_cancel_is_a_conflict(self):
        self.pserv("p1", {"known": True, "outcome": "succeeded"}, epoch=7)
        with self.assertRaises(Conflict) as caught:
            await self.region.cancel_op(1, by="alice")
        self.assertIn("ended succeeded", str(caught.exception))
        self.assertEqual(self.store.outcomes, [])

    async def test_one_pserv_that_cancelled_it_wins_over_another_that_saw_it_end(self):
        """
        When the pserv that had it in play cancelled it, a second pserv's
        stale view (say, a former owner's) does not make it a conflict.
        """
        self.pserv("p1", {"known": True, "outcome": "cancelled"}, epoch=7)
        self.pserv("p2", {"known": True, "outcome": "failed"})
        op = await self.region.cancel_op(1, by="alice")
        self.assertEqual(op["state"], "cancelled")

    async def test_a_pending_operation_with_no_pserv_anywhere_is_cancelled_at_once(self):
        """
        Nothing has it in play (no owner, never started): the journal can
        say ``cancelled`` without reaching any device.
        """
        self.leases.owners["n1"] = owner(None)
        op = await self.region.cancel_op(1, by="alice")
        self.assertEqual(op["state"], "cancelled")
        self.assertEqual(self.store.outcomes[0][2]["error"], "cancelled by alice")

    async def test_an_operation_running_on_a_pserv_not_connected_here_needs_force(self):
        self.store.op_rows[1].update(state="running", pserv="p9")
        self.leases.owners["n1"] = owner(None)
        with self.assertRaises(Unavailable):
            await self.region.cancel_op(1, by="alice")
        self.assertEqual(self.store.operator[-1], (1, "cancelled_by", None, True))
        self.assertEqual(self.store.outcomes, [])
        op = await self.region.cancel_op(1, by="alice", force=True)
        self.assertEqual(op["state"], "cancelled")
        self.assertIn("forced", self.store.outcomes[0][2]["error"])

    async def test_the_operation_of_a_deleted_node_is_cancelled_without_asking_pservs(self):
        """Its node is gone (so is its cluster as far as we know): nobody can have it."""
        p = self.pserv("p1", {"known": True, "outcome": "succeeded"}, epoch=7)
        del self.store.node_rows["n1"]
        del self.leases.owners["n1"]
        op = await self.region.cancel_op(1, by="alice")
        self.assertEqual(op["state"], "cancelled")
        self.assertEqual(p.calls, [])
