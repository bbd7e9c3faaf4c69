"""
A region and a pserv talking AMP in memory (``powerctl.testing``): the real
``Region``, ``RegionProtocol``, ``PservProtocol``, ``Pserv``, registry and
executor, with an in-memory journal and fake devices instead of
PostgreSQL, TCP and BMCs, on a ``Clock``.

What is held here is the pserv's duplicate handling as the region sees it:
an operation sent twice drives the device once, a finished one sent again
is answered from memory (never run twice), an identical request joins the
one in play, and an operation re-sent by recovery after the connection
dropped is recognised while it still runs, its outcome delivered over the
new connection.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.config import PservConfig
from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.pserv.core import Pserv
from powerctl.pserv.executor import DriverExecutor
from powerctl.pserv.link import PservProtocol, RegionLink
from powerctl.region.core import Region
from powerctl.region.rpc import RegionProtocol
from powerctl.registry import PowerActionRegistry
from powerctl.testing.amp import connect
from powerctl.testing.drivers import FakeDriverType
from powerctl.testing.region import FakeLeases, FakeRegionStore

SECRET = b"in-memory secret"


def power(device):
    return {"mode": "single", "agents": [{"driver": "fake", "params": {"device": device}}]}


class InMemoryFleet:
    """
    One region and one pserv of cluster ``c1`` connected in memory; the
    pserv's devices hold every call until the test releases it.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.store = FakeRegionStore()
        self.leases = FakeLeases(self.store)
        self.region = Region("r1", self.store, SECRET, self.clock, leases=self.leases)
        self.drivers = FakeDriverType(hold=True)
        self.executor = DriverExecutor(DriverCatalogue([self.drivers]))
        self.registry = PowerActionRegistry(self.executor, self.clock, cancel_timeout=5)
        self.link = RegionLink()
        self.pserv = Pserv(self.registry, self.executor, self.link.report)
        self.settings = PservConfig(name="p1", cluster="c1", heartbeat_interval=5.0)
        self.store.add_node("n1", "c1", power("bmc1"))
        self.store.add_node("n2", "c1", power("bmc2"))
        self.pair = self.connect()

    def connect(self):
        """A fresh connection (the pserv's next dial, or a restarted region's)."""
        client = PservProtocol(self.pserv, self.link, self.settings, SECRET, self.clock,
                               instance="p1-instance")
        pair = connect(RegionProtocol(self.region), client, self.clock)
        self.assertTrue(self.link.connected, "the hand-shake did not complete")
        self.addCleanup(lambda: pair.disconnect() if pair.connected else None)
        return pair

    def dispatch(self, op):
        """``Region.dispatch`` of ``op``, pumped until the region has its answer."""
        d = defer.ensureDeferred(self.region.dispatch(op))
        self.pair.flush()
        return self.successResultOf(d)

    def release(self, device):
        """The device answers its oldest held call; the report is pumped to the region."""
        name = self.drivers.device(device).release()
        self.pair.flush()
        return name

    def state(self, op):
        return self.store.op_rows[op["id"]]["state"]

    def reports(self, op):
        """The outcomes the region was given for ``op``: one per run, never more."""
        return [c[2] for c in self.store.calls if c[:2] == ("record_outcome", op["id"])]


class DuplicateTests(InMemoryFleet, unittest.TestCase):
    def test_the_hand_shake_leaves_the_pserv_owning_its_cluster(self):
        self.assertEqual(self.pserv.epoch, 1)
        self.assertEqual(self.store.node_rows["n1"]["owner_epoch"], 1)
        self.assertEqual(self.executor.known_nodes(), ["n1", "n2"])

    def test_an_operation_sent_twice_drives_the_device_once(self):
        op = self.store.add_op("n1", "off")
        self.assertEqual(self.dispatch(op), "started")
        self.assertEqual(self.dispatch(op), "known")
        self.assertEqual(self.drivers.device("bmc1").calls, ["off"])
        self.assertEqual(self.state(op), "running")
        self.release("bmc1")
        self.assertEqual(self.state(op), "succeeded")
        self.assertEqual(self.store.op_rows[op["id"]]["observed_state"], "off")
        self.assertEqual(self.drivers.device("bmc1").calls, ["off"])
        self.assertEqual(self.reports(op), ["succeeded"])

    def test_a_finished_operation_sent_again_is_answered_from_memory(self):
        op = self.store.add_op("n1", "on")
        self.dispatch(op)
        self.release("bmc1")
        self.assertEqual(self.reports(op), ["succeeded"])
        # The journal lost the outcome (a restore): the region sends it again.
        self.store.op_rows[op["id"]]["state"] = "running"
        self.assertEqual(self.dispatch(op), "known")
        self.assertEqual(self.state(op), "succeeded")  # re-reported, not re-run
        self.assertEqual(self.reports(op), ["succeeded", "succeeded"])
        self.assertEqual(self.drivers.device("bmc1").calls, ["on"])
        self.assertEqual(self.drivers.device("bmc1").held, [])

    def test_an_identical_request_joins_the_one_in_play(self):
        first = self.store.add_op("n1", "off")
        second = self.store.add_op("n1", "off")
        self.assertEqual(self.dispatch(first), "started")
        self.assertEqual(self.dispatch(second), "coalesced")
        self.release("bmc1")
        self.assertEqual(self.drivers.device("bmc1").calls, ["off"])
        self.assertEqual((self.state(first), self.state(second)), ("succeeded", "succeeded"))
        self.assertEqual(self.store.op_rows[second["id"]]["coalesced_into"], first["id"])

    def test_an_operation_recovered_while_it_runs_is_not_run_again(self):
        op = self.store.add_op("n2", "cycle")
        self.dispatch(op)
        self.pair.disconnect()
        self.assertFalse(self.link.connected)
        # The pserv dials again; recovery hands it every open operation,
        # this one included: it is still in play, so it is skipped.
        self.pair = self.connect()
        self.assertEqual(self.drivers.device("bmc2").calls, ["cycle"])
        [activity] = self.registry.activity("n2")
        self.assertEqual((activity.running.operation_id, activity.running.joined),
                         (str(op["id"]), ()))  # one request, not one joined to itself
        self.release("bmc2")  # its outcome goes over the new connection
        self.assertEqual(self.state(op), "succeeded")
        self.assertEqual(self.drivers.device("bmc2").calls, ["cycle"])
        self.assertEqual(self.reports(op), ["succeeded"])

    def test_an_outcome_reached_while_disconnected_is_delivered_on_reconnect(self):
        op = self.store.add_op("n1", "off")
        self.dispatch(op)
        self.pair.disconnect()
        self.release("bmc1")  # done, with no region to tell
        self.assertEqual(self.state(op), "running")
        self.pair = self.connect()
        self.assertEqual(self.state(op), "succeeded")
        self.assertEqual(self.drivers.device("bmc1").calls, ["off"])
