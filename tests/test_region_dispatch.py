"""
``Region.dispatch`` without PostgreSQL or TCP: the real region, its AMP
responder and a real pserv connected in memory (``powerctl.testing``),
the journal and lease table in memory, on a ``Clock``.

Where a journalled operation goes: to its node's owner under the owner's
epoch, if that pserv is connected here (journalled ``running`` there);
nowhere, and it stays ``pending``, when the node has no owner, is being
handed over, or the pserv refused the epoch or vanished mid-call; to
another region (``elsewhere``) when the owner is connected there; and a
power configuration the pserv refuses ends the operation ``failed``.
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests.test_pserv_duplicates import InMemoryFleet


class DispatchTests(InMemoryFleet, unittest.TestCase):
    def dispatch_without_answer(self, op):
        """Start ``Region.dispatch`` but deliver nothing: the call is in flight."""
        return defer.ensureDeferred(self.region.dispatch(op))

    def test_an_operation_goes_to_the_owner_under_its_epoch(self):
        op = self.store.add_op("n1", "off")
        self.assertEqual(self.dispatch(op), "started")
        self.assertEqual(self.drivers.device("bmc1").calls, ["off"])
        self.assertIn(("mark_running", op["id"], "p1", 1), self.store.calls)
        self.assertEqual(self.store.op_rows[op["id"]]["pserv"], "p1")

    def test_the_pserv_s_disposition_is_answered(self):
        self.dispatch(self.store.add_op("n1", "off"))
        self.assertEqual(self.dispatch(self.store.add_op("n1", "off")), "coalesced")
        self.assertEqual(self.dispatch(self.store.add_op("n1", "on")), "waiting")

    def test_a_node_that_does_not_exist_is_gone(self):
        self.assertEqual(self.dispatch({"id": 99, "node": "ghost", "action": "on"}), "gone")

    def test_a_node_without_an_owner_is_assigned_first(self):
        self.store.add_node("n3", "c1", {"mode": "single", "agents": [
            {"driver": "fake", "params": {"device": "bmc3"}}]})
        op = self.store.add_op("n3", "on")
        self.assertEqual(self.dispatch(op), "started")
        self.assertEqual(self.store.node_rows["n3"]["owner_epoch"], 1)
        self.assertEqual(self.drivers.device("bmc3").calls, ["on"])

    def test_a_cluster_with_no_live_pserv_leaves_the_operation_pending(self):
        self.store.add_node("lone", "c2", {"mode": "single", "agents": [
            {"driver": "fake", "params": {"device": "bmc9"}}]})
        op = self.store.add_op("lone", "on")
        self.assertEqual(self.dispatch(op), "pending")
        self.assertEqual(self.store.op_rows[op["id"]]["state"], "pending")
        self.assertEqual(self.drivers.device("bmc9").calls, [])

    def test_a_node_being_handed_over_waits(self):
        self.store.node_rows["n1"]["handoff_epoch"] = 1
        op = self.store.add_op("n1", "on")
        self.assertEqual(self.dispatch(op), "pending")
        self.assertEqual(self.drivers.device("bmc1").calls, [])

    def test_an_owner_connected_elsewhere_is_left_to_its_region(self):
        self.store.node_rows["n1"]["owner_epoch"] = 7
        op = self.store.add_op("n1", "on")
        self.assertEqual(self.dispatch(op), "elsewhere")
        self.assertEqual(self.store.op_rows[op["id"]]["state"], "pending")
        self.assertEqual(self.drivers.device("bmc1").calls, [])

    def test_a_configuration_the_pserv_refuses_fails_the_operation(self):
        self.store.node_rows["n1"]["power"] = {"mode": "single", "agents": [{"driver": "nope"}]}
        op = self.store.add_op("n1", "on")
        self.assertEqual(self.dispatch(op), "failed")
        row = self.store.op_rows[op["id"]]
        self.assertEqual((row["state"], row["pserv"]), ("failed", "p1"))
        self.assertTrue(row["error"].startswith("config: "), row["error"])
        self.assertIn("unknown driver 'nope'", row["error"])

    def test_an_epoch_the_pserv_no_longer_holds_leaves_the_operation_pending(self):
        self.pserv.epoch = 2  # it registered again meanwhile; the region is behind
        op = self.store.add_op("n1", "on")
        self.assertEqual(self.dispatch(op), "pending")
        self.assertEqual(self.store.op_rows[op["id"]]["state"], "pending")
        self.assertEqual(self.drivers.device("bmc1").calls, [])

    def test_a_connection_lost_mid_call_leaves_the_operation_pending(self):
        op = self.store.add_op("n1", "on")
        d = self.dispatch_without_answer(op)
        self.assertNoResult(d)
        self.pair.disconnect()  # the command is lost with the link
        self.assertEqual(self.successResultOf(d), "pending")
        self.assertNotIn("mark_running", [c[0] for c in self.store.calls])
        self.assertEqual(self.drivers.device("bmc1").calls, [])

    def test_an_operation_deleted_while_the_pserv_takes_it_is_gone(self):
        # Deleted (with its node) by another region between the call and its
        # answer: nothing to record, and no failure logged -- raised on, it
        # was a logged failure of the NOTIFY drain that ran it.
        op = self.store.add_op("n1", "on")
        d = self.dispatch_without_answer(op)
        del self.store.op_rows[op["id"]]
        self.pair.flush()
        self.assertEqual(self.successResultOf(d), "gone")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_node_deleted_after_its_owner_was_read_is_gone(self):
        op = self.store.add_op("n1", "on")
        read = self.store.nodes.power_config

        async def deleted(name):
            del self.store.node_rows[name]
            return await read(name)

        self.store.nodes.power_config = deleted
        self.assertEqual(self.dispatch(op), "gone")
        self.assertEqual(self.drivers.device("bmc1").calls, [])

    def test_a_bug_on_the_pserv_leaves_the_operation_pending(self):
        # INTERNAL_ERROR: logged with its traceback on the pserv; the region
        # leaves the operation for the next Recover.
        def broken(*args, **kwargs):
            raise ZeroDivisionError("bug")

        self.pserv.dispatch = broken
        op = self.store.add_op("n1", "on")
        self.assertEqual(self.dispatch(op), "pending")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.store.op_rows[op["id"]]["state"], "pending")

    def test_the_region_skips_the_notify_of_what_it_dispatched_itself(self):
        op = self.store.add_op("n1", "off")
        sending = self.region.dispatch_later(op)  # in flight: still pending in the journal
        heard = defer.ensureDeferred(self.region.notified("power_ops", str(op["id"])))
        self.pair.flush()
        self.successResultOf(sending)
        self.successResultOf(heard)
        self.assertEqual(self.drivers.device("bmc1").calls, ["off"])
        sent = [c for c in self.store.calls if c[:2] == ("mark_running", op["id"])]
        self.assertEqual(len(sent), 1)

    def test_a_notify_dispatches_a_pending_operation_of_another_region(self):
        op = self.store.add_op("n2", "on")
        d = defer.ensureDeferred(self.region.notified("power_ops", str(op["id"])))
        self.pair.flush()
        self.successResultOf(d)
        self.assertEqual(self.drivers.device("bmc2").calls, ["on"])
        self.assertEqual(self.store.op_rows[op["id"]]["state"], "running")
