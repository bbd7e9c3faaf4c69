"""
More of the region's coordination (:mod:`powerctl.region.core`) that
mutation testing left unpinned after tests/test_region_core_bite.py: the
silent-pserv reaper against ``last_heard``, the heartbeat default, a pserv
failing a command with a bug, a reconfiguration that the pservs must (or
need not) hear of, a cancel whose node's owner is connected elsewhere, the
refusal a confirmation reports, and when an assignment round refreshes.

No database and no sockets: the doubles of tests/test_region_core_bite.py
and a :class:`twisted.internet.task.Clock`.
"""

import attrs
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from powerctl.config import RegionConfig
from powerctl.region.core import Region
from powerctl.region.errors import Conflict, Unavailable
from powerctl.rpc import commands
from tests.test_region_core_bite import (PENDING, FakeLeases, FakeProtocol, FakeStore,
                                         make_region, owner)

MANUAL = {"mode": "single", "agents": [{"driver": "manual", "params": {}}]}


class Transport:
    def __init__(self):
        self.aborted = False

    def abortConnection(self):
        self.aborted = True


class Logged(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, fragment):
        return [formatEvent(e) for e in self.events if fragment in formatEvent(e)]


class SilentPservTests(Logged):
    def test_only_a_pserv_silent_for_longer_than_the_timeout_is_dropped(self):
        clock = task.Clock()
        clock.advance(1000)
        region = make_region(clock=clock, heartbeat_timeout=30.0)
        quiet, silent = FakeProtocol("p1"), FakeProtocol("p2")
        quiet.last_heard, silent.last_heard = 1000 - 29.5, 1000 - 31.2
        for p in (quiet, silent):
            p.transport = Transport()
            region.directory.add(p)
        region.drop_silent_pservs()
        self.assertEqual((quiet.transport.aborted, silent.transport.aborted), (False, True))
        self.assertEqual(len(self.logged("silent for")), 1)
        self.assertIn("pserv p2 silent for 31s", self.logged("silent for")[0])

    def test_a_region_built_without_a_timeout_uses_the_configured_default(self):
        default = attrs.fields_dict(RegionConfig)["heartbeat_timeout"].default
        region = Region("r1", FakeStore(), b"secret", task.Clock(), leases=FakeLeases())
        self.assertEqual(region.heartbeat_timeout, default)


class BuggyAnswerTests(Logged):
    async def test_a_pserv_failing_with_a_bug_is_logged_once_with_its_cause(self):
        """
        Deleting a node asks every pserv of its cluster to forget it; one
        that fails with an undeclared error (a bug) is logged with its
        traceback, and the deletion goes on.
        """
        store = FakeStore(nodes=[{"name": "n1", "cluster": "c1"}])
        region = make_region(store)
        region.directory.add(FakeProtocol("p1", answers={
            commands.ForgetNode: RuntimeError("a bug in the pserv")}))
        region.directory.add(FakeProtocol("p2", answers={commands.ForgetNode: {"cancelled": []}}))
        result = await region.delete_node("n1", by="alice")
        self.assertEqual(result, {"node": "n1", "cancelled": []})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.logged("ForgetNode to pserv p1 failed unexpectedly")), 1)
        self.assertEqual(self.logged("to pserv p2"), [])


    async def test_a_region_without_a_lease_table_deletes_a_node_too(self):
        """(Tools and tests build one: there is nobody to NOTIFY then.)"""
        store = FakeStore(nodes=[{"name": "n1", "cluster": "c1"}])
        region = Region("r1", store, b"secret", task.Clock(), leases=None)
        self.assertEqual(await region.delete_node("n1", by="alice"),
                         {"node": "n1", "cancelled": []})
        self.assertEqual(store.deleted, ["n1"])


class UpdatingStore(FakeStore):
    """:class:`FakeStore` with the node update and open operations a reconfiguration uses."""

    async def update(self, name, quiesce=None, by=None, **fields):
        node = self.node_rows[name]
        relevant = any(node.get(k) != v for k, v in fields.items() if k != "description")
        if relevant and quiesce is not None:
            await quiesce(dict(node))
        node.update(fields)
        return dict(node, changed_for_pserv=relevant)

    async def open_of_node(self, name):
        return [dict(o) for _, o in sorted(self.op_rows.items())
                if o["node"] == name and o["state"] in ("pending", "running")]


class UpdateNodeTests(unittest.TestCase):
    def setUp(self):
        self.store = UpdatingStore(ops=[PENDING],
                                   nodes=[{"name": "n1", "cluster": "c1", "power": MANUAL}])
        self.leases = FakeLeases(owners={"n1": owner(7)})
        self.region = make_region(self.store, self.leases)
        self.pserv = FakeProtocol("p1", epoch=7, answers={
            commands.ForgetNode: {"cancelled": []},
            commands.PowerOn: {"disposition": "started"}})
        self.region.directory.add(self.pserv)

    async def test_a_change_the_pservs_must_know_reaches_them_and_reruns_open_operations(self):
        other = {"mode": "single", "agents": [{"driver": "manual", "params": {"x": 1}}]}
        row = await self.region.update_node("n1", by="alice", power=other)
        self.assertNotIn("changed_for_pserv", row)
        self.assertEqual([k["node"] for k in self.pserv.sent(commands.ForgetNode)], ["n1"])
        self.assertEqual((self.leases.notified, self.leases.assigned), (["c1"], ["c1"]))
        self.assertEqual([k["operation_id"] for k in self.pserv.sent(commands.PowerOn)], [1])

    async def test_a_change_they_need_not_know_is_not_sent(self):
        await self.region.update_node("n1", by="alice", description="rack 4")
        self.assertEqual(self.pserv.calls, [])
        self.assertEqual((self.leases.notified, self.leases.assigned), ([], []))


class CancelOwnedElsewhereTests(unittest.TestCase):
    def setUp(self):
        self.store = FakeStore(ops=[PENDING], nodes=[{"name": "n1", "cluster": "c1"}])
        self.leases = FakeLeases()
        self.region = make_region(self.store, self.leases)

    async def test_a_pending_operation_of_a_node_owned_by_a_pserv_connected_elsewhere(self):
        """
        Its owner may be dispatching it through another region right now:
        without force this region cannot make sure the device stays quiet.
        """
        self.leases.owners["n1"] = owner(9)
        self.region.directory.add(FakeProtocol("p1", epoch=7, answers={
            commands.CancelOperation: {"known": False, "outcome": ""}}))
        with self.assertRaises(Unavailable):
            await self.region.cancel_op(1, by="alice")
        self.assertEqual(self.store.outcomes, [])
        op = await self.region.cancel_op(1, by="alice", force=True)
        self.assertEqual(op["state"], "cancelled")

    async def test_a_node_with_no_lease_row_has_nobody_to_wait_for(self):
        op = await self.region.cancel_op(1, by="alice")  # leases know nothing of n1
        self.assertEqual(op["state"], "cancelled")


class ConfirmTests(unittest.TestCase):
    async def test_the_refusal_reported_is_the_first_pserv_s(self):
        """(The least busy first: the one that would have run it.)"""
        store = FakeStore(ops=[dict(PENDING, state="running", pserv="p1")],
                          nodes=[{"name": "n1", "cluster": "c1", "power": MANUAL}])
        region = make_region(store)
        for name, why in (("p1", "no manual agent waits for operation 1"),
                          ("p2", "operation 1 is not known here")):
            region.directory.add(FakeProtocol(name, answers={
                commands.ConfirmOperation: commands.NotConfirmable(why)}))
        with self.assertRaises(Conflict) as caught:
            await region.confirm_op(1, "on", by="alice")
        self.assertEqual(str(caught.exception), "cannot confirm power operation 1: no manual "
                         "agent waits for operation 1")


class StubLeases(FakeLeases):
    """An assignment round answers ``changes`` as given."""

    def __init__(self, changes):
        super().__init__()
        self.changes = changes

    async def assign(self, cluster):
        self.assigned.append(cluster)
        return self.changes


class AssignRefreshTests(Logged):
    async def refreshed(self, changes):
        region = make_region(leases=StubLeases(changes))
        pserv = FakeProtocol("p1", answers={commands.Refresh: {}})
        region.directory.add(pserv)
        await region.assign("c1")
        return len(pserv.sent(commands.Refresh))

    async def test_a_round_that_moved_nodes_refreshes_and_says_so(self):
        self.assertEqual(await self.refreshed({"assigned": {7: ["n1", "n2"]}, "handoffs": {}}),
                         1)
        self.assertIn("cluster c1: assigned {7: 2}, handing over {}",
                      self.logged("cluster c1:")[0])
        self.assertEqual(await self.refreshed({"assigned": {}, "handoffs": {8: ["n3"]}}), 1)
        self.assertEqual(len(self.logged("cluster c1:")), 2)

    async def test_a_round_that_changed_nothing_stays_quiet(self):
        self.assertEqual(await self.refreshed({"assigned": {}, "handoffs": {}, "waiting": []}),
                         0)
        self.assertEqual(await self.refreshed(None), 0)
        self.assertEqual(self.logged("cluster c1:"), [])
