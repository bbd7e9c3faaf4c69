"""
Issue 14, a power request's path through the region: the request statement
also says who runs it (``OperationStore.request_serving``, one statement
instead of a transaction after it), and a dispatch with no pserv connected
to this region reads nothing.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.region.core import Region
from powerctl.region.errors import NotFound
from powerctl.testing.region import FakeLeases, FakeRegionStore
from tests.test_store import StoreTestCase, ipmi


class RequestServingTests(StoreTestCase):
    async def test_the_request_answers_its_cluster_and_live_pservs(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.store.clusters.register_pserv("p2", "c1", "1", "r1")
        await self.store.clusters.register_pserv("p1", "c1", "1", "r1")
        await self.store.clusters.register_pserv("gone", "c1", "1", "r1")
        await self.store.clusters.pserv_disconnected("gone")
        await self.store.clusters.register_pserv("other", "c2", "1", "r1")
        op, serving = await self.store.ops.request_serving("n1", "on", "alice", live_within=90)
        self.assertEqual((op["node"], op["action"], op["state"], op["requester"]),
                         ("n1", "on", "pending", "alice"))
        self.assertEqual(serving, ("c1", ["p1", "p2"]))
        self.assertEqual(serving, await self.store.clusters.serving("n1"))
        self.assertEqual((await self.store.nodes.get("n1"))["desired_state"], "on")
        # a pserv not heard within live_within is not live
        await self.pool.runOperation(
            "UPDATE pservs SET last_heartbeat = now() - interval '100 seconds'"
            " WHERE name = 'p1'")
        _, serving = await self.store.ops.request_serving("n1", "query", live_within=90)
        self.assertEqual(serving, ("c1", ["p2"]))

    async def test_an_unknown_node_writes_nothing(self):
        with self.assertRaises(NotFound):
            await self.store.ops.request_serving("ghost", "off", live_within=90)
        self.assertEqual(await self.sql("SELECT count(*) FROM power_ops"), [(0,)])

    async def test_a_fence_leaves_the_serving_read_to_the_caller(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        op, serving = await self.store.ops.request_serving("n1", "fence", live_within=90)
        self.assertEqual((op["action"], serving), ("fence", None))


class _CountingLeases(FakeLeases):
    def __init__(self, store):
        super().__init__(store)
        self.reads = 0

    async def owner(self, node):
        self.reads += 1
        return await super().owner(node)


class DispatchWithoutPservsTests(unittest.TestCase):
    def test_no_pserv_connected_here_means_no_read(self):
        store = FakeRegionStore()
        store.add_node("n1", "c1", {"mode": "single", "agents": [
            {"driver": "fake", "params": {"device": "bmc1"}}]})
        leases = _CountingLeases(store)
        region = Region("r1", store, b"secret", task.Clock(), leases=leases)
        op = {"id": 1, "node": "n1", "action": "on"}
        self.assertEqual(self.successResultOf(defer.ensureDeferred(region.dispatch(op))),
                         "pending")
        self.assertEqual(leases.reads, 0)

    def test_dispatch_later_takes_no_turn_when_no_pserv_is_connected(self):
        store = FakeRegionStore()
        region = Region("r1", store, b"secret", task.Clock(), leases=_CountingLeases(store))
        region._dispatching.run = lambda *a, **kw: self.fail("took a dispatch turn")
        d = region.dispatch_later({"id": 7, "node": "n1", "action": "on"})
        self.assertEqual(self.successResultOf(d), "pending")
        self.assertIn(7, region._dispatched)  # its own NOTIFY is still recognised
