"""
A node's whole life, end to end: a real PostgreSQL, a region and pservs
over real AMP on loopback, simulated Redfish services that log every
request.  Delete, move, a new power configuration, an operator's cancel and
a manual confirmation each check the journal, the simulator's request log,
and that the pserv's later poll rounds stay clean (no error logged, the
other nodes still polled, the connection kept).
"""

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from powerctl.sim.redfish import RedfishSimulator, SimSystem
from tests.pg import DatabaseMixin
from tests.system import ADMIN, SystemMixin, wait_until


class LogCapture:
    """Warnings and worse logged through twisted.logger while installed."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            self.events.append(event)

    def texts(self):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class LifecycleMixin(SystemMixin):
    timeout = 60
    switch_delay = 2.0  # a slow BMC: an action stays in flight long enough

    async def start(self, nodes=("node1", "node2")):
        await self.start_region()
        self.pserv = await self.start_pserv()
        await wait_until(self.connected_pservs)
        for name in nodes:
            await self.add_node(name)

    def requests_for(self, system, since=0, sim=None):
        sim = sim or self.sim
        return [r for r in sim.requests[since:] if f"/Systems/{system}" in r]

    async def reset_sent(self, system, sim=None):
        sim = sim or self.sim
        await wait_until(lambda: defer.succeed(sim.systems[system].resets))

    async def clean_poll_round(self, pserv=None):
        """One poll round of ``pserv``; answers what it logged at warn or worse."""
        pserv = pserv or self.pserv
        await wait_until(lambda: defer.succeed(pserv.link.connected and pserv.link.epoch))
        capture = LogCapture(self)
        await pserv.poller.poll_once()
        await sleep(0.2)  # let the region record the batch
        return capture.texts()


class DeleteTests(LifecycleMixin, DatabaseMixin, unittest.TestCase):
    async def test_delete_during_an_operation_cancels_it_and_keeps_history(self):
        await self.start()
        op = await self.power("node1", "on")
        await self.reset_sent("node1")
        [connection] = self.region.region.directory.all()
        code, body = await self.call("DELETE", "/v1/nodes/node1?requester=alice")
        self.assertEqual(code, 204, body)
        mark = len(self.sim.requests)
        # The pserv stopped and forgot it before the delete answered.
        self.assertNotIn("node1", self.pserv.executor.known_nodes())
        self.assertEqual(self.pserv.registry.activity("node1"), [])
        done = await self.op(op["id"])
        self.assertEqual((done["state"], done["cancelled_by"]), ("cancelled", ADMIN), done)
        self.assertIn("deleted", done["error"])
        # History stays in the journal; the node is gone.
        history = await self.get("/v1/power_ops?node=node1")
        self.assertEqual([o["id"] for o in history], [op["id"]])
        code, _ = await self.call("GET", "/v1/nodes/node1")
        self.assertEqual(code, 404)
        # Later poll rounds: clean, node2 still polled, node1 never touched.
        logged = await self.clean_poll_round()
        self.assertEqual(logged, [])
        node2 = await self.get("/v1/nodes/node2")
        self.assertIsNotNone(node2["last_queried_at"])
        await sleep(0.5)
        self.assertEqual(self.requests_for("node1", mark), [])
        self.assertEqual(self.region.region.directory.all(), [connection])
    async def test_node_deleted_while_its_pserv_was_away_is_forgotten_on_reconnect(self):
        await self.start()
        await self.pserv.stopService()
        await wait_until(lambda: defer.succeed(not self.region.region.directory.all()))
        code, _ = await self.call("DELETE", "/v1/nodes/node1")
        self.assertEqual(code, 204)
        pserv = await self.start_pserv()
        await wait_until(self.connected_pservs)
        await wait_until(lambda: defer.succeed(pserv.executor.known_nodes() == ["node2"]))
        mark = len(self.sim.requests)
        self.assertEqual(await self.clean_poll_round(pserv), [])
        self.assertEqual(self.requests_for("node1", mark), [])
        self.assertTrue(self.requests_for("node2", mark))
    async def test_outcome_of_an_operation_deleted_under_the_pserv_is_dropped_once(self):
        """
        The old failure: an outcome for a node deleted while its pserv was
        away raised an undeclared error, AMP dropped the connection, and the
        pserv re-sent it forever.  Now it is refused once, logged, dropped.
        """
        await self.start()
        op = await self.power("node2", "on")
        await self.reset_sent("node2")
        # Delete behind the region's back (as another region without this
        # pserv would): the operation row goes too, as if restored from backup.
        await self.store_delete_op_and_node(op["id"], "node2")
        connection = self.region.region.directory.all()
        await wait_until(lambda: defer.succeed(not self.pserv.pserv.in_flight()))
        # The refused outcome leaves the outbox (reports go in batches, two
        # calls in flight at most: under load that can take a moment) ...
        await wait_until(lambda: defer.succeed(
            not self.pserv.link._outbox and not self.pserv.link._in_flight))
        await sleep(0.5)
        # ... and is not re-sent, and the connection stays.
        self.assertEqual(self.region.region.directory.all(), connection)
        self.assertEqual(len(self.pserv.link._outbox), 0)
    async def test_delete_with_no_pserv_cancels_its_pending_operations(self):
        await self.start_region()
        await self.add_node("node1")
        ops = [await self.power("node1", "on"), await self.power("node1", "off")]
        code, body = await self.call("DELETE", "/v1/nodes/node1?requester=alice")
        self.assertEqual(code, 204, body)
        for op in ops:
            done = await self.op(op["id"])
            self.assertEqual((done["state"], done["cancelled_by"]), ("cancelled", ADMIN))
            self.assertEqual(done["error"], f"node node1 deleted by {ADMIN}")

    async def store_delete_op_and_node(self, op_id, node):
        store = self.region.region.store
        await store.ops._pool.runOperation("DELETE FROM power_ops WHERE id = %s", (op_id,))
        await store.nodes._pool.runOperation("DELETE FROM nodes WHERE name = %s", (node,))


class ReportTests(LifecycleMixin, DatabaseMixin, unittest.TestCase):
    async def test_unknown_node_in_a_batch_does_not_stop_the_rest(self):
        await self.start(nodes=("node1", "node2"))
        await wait_until(lambda: defer.succeed(self.pserv.link.connected))
        [protocol] = self.pserv.link._connected
        from powerctl.rpc import commands

        capture = LogCapture(self)
        for _ in range(2):
            await protocol.callRemote(commands.ReportPowerState, epoch=protocol.epoch, states=[
                {"node": "node1", "state": "on", "error": ""},
                {"node": "ghost", "state": "on", "error": ""},
                {"node": "node2", "state": "on", "error": ""}])
        for name in ("node1", "node2"):
            node = await self.get(f"/v1/nodes/{name}")
            self.assertEqual(node["power_state"], "on", name)
        ghosts = [t for t in capture.texts() if "ghost" in t]
        self.assertEqual(len(ghosts), 1, capture.texts())
    async def test_outcome_for_an_unknown_operation_is_refused_without_losing_the_link(self):
        await self.start(nodes=("node1",))
        await wait_until(lambda: defer.succeed(self.pserv.link.connected))
        [protocol] = self.pserv.link._connected
        from powerctl.rpc import commands

        answer = await protocol.callRemote(
            commands.ReportOutcome, operation_id=987654, outcome="succeeded", epoch=protocol.epoch,
            observed_state="on", agent="", error="", coalesced_into=0, superseded_by=0)
        self.assertEqual(answer, {"recorded": False})
        self.assertEqual(self.pserv.link._connected, [protocol])


class ChangeTests(LifecycleMixin, DatabaseMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.sim2 = RedfishSimulator(
            reactor, [SimSystem(id="other", name="other")], username="admin",
            password="new-pass", delay=0.2).start()
        self.addCleanup(self.sim2.stop)
    async def test_new_power_configuration_never_runs_with_the_old_one(self):
        await self.start()
        op = await self.power("node1", "on")
        await self.reset_sent("node1")
        code, body = await self.call("PUT", "/v1/nodes/node1", {
            "power": self.redfish_power("other", sim=self.sim2, password="new-pass"),
            "requester": "bob"})
        self.assertEqual(code, 200, body)
        mark = len(self.sim.requests)
        done = await self.op(op["id"])
        self.assertEqual((done["state"], done["cancelled_by"]), ("cancelled", ADMIN), done)
        self.assertIn("reconfigured", done["error"])
        # The next request goes to the new BMC with the new credentials.
        second = await self.power("node1", "on")
        finished = await self.wait_op(second["id"])
        self.assertEqual(finished["state"], "succeeded", finished)
        self.assertEqual(self.sim2.systems["other"].power_state, "On")
        self.assertEqual(await self.clean_poll_round(), [])
        await sleep(0.3)
        self.assertEqual(self.requests_for("node1", mark), [])
    async def test_move_to_another_cluster_hands_the_node_over(self):
        await self.start()
        other = await self.start_pserv(name="pserv-b", cluster="c2")
        await wait_until(lambda: self._connected("pserv-b"))
        op = await self.power("node1", "on")
        await self.reset_sent("node1")
        code, body = await self.call("PUT", "/v1/nodes/node1", {"cluster": "c2"})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["cluster"], "c2")
        self.assertNotIn("node1", self.pserv.executor.known_nodes())
        done = await self.op(op["id"])
        self.assertEqual(done["state"], "cancelled", done)
        off = await self.power("node1", "off")
        finished = await self.wait_op(off["id"])
        self.assertEqual((finished["state"], finished["pserv"]), ("succeeded", "pserv-b"))
        # The old pserv's rounds no longer touch it; the new one polls it.
        self.assertEqual(await self.clean_poll_round(), [])
        await other.poller.poll_once()
        self.assertIn("node1", other.executor.known_nodes())
        self.assertNotIn("node1", self.pserv.executor.known_nodes())

    async def _connected(self, name):
        return name in await self.connected_pservs()


class CancelTests(LifecycleMixin, DatabaseMixin, unittest.TestCase):
    async def _running(self, op_id):
        return (await self.op(op_id))["state"] == "running"
    async def test_operator_cancel_quiets_the_device_first(self):
        await self.start()
        op = await self.power("node1", "on")
        await self.reset_sent("node1")
        code, body = await self.call("POST", f"/v1/power_ops/{op['id']}/cancel",
                                     {"requester": "carol"})
        self.assertEqual(code, 200, body)
        self.assertEqual((body["state"], body["cancelled_by"]), ("cancelled", ADMIN))  # the token's name, not "carol"
        mark = len(self.sim.requests)
        await sleep(0.5)
        self.assertEqual(self.requests_for("node1", mark), [])
        self.assertEqual(self.pserv.registry.activity("node1"), [])
        # Cancelling it again, or a finished operation, is a clear 409.
        code, body = await self.call("POST", f"/v1/power_ops/{op['id']}/cancel")
        self.assertEqual(code, 409, body)
        self.assertIn("already ended cancelled", body["error"]["message"])
        done = await self.power("node2", "on")
        await self.wait_op(done["id"])
        code, body = await self.call("POST", f"/v1/power_ops/{done['id']}/cancel")
        self.assertEqual(code, 409, body)
        code, body = await self.call("POST", "/v1/power_ops/99999/cancel")
        self.assertEqual(code, 404, body)
        self.assertEqual(await self.clean_poll_round(), [])
    async def test_cli_cancels(self):
        await self.start()
        op = await self.power("node1", "on")
        await self.reset_sent("node1")
        code, out, err = await self.cli("ops", "cancel", str(op["id"]))
        self.assertEqual(code, 0, out + err)
        self.assertIn("cancelled", out)
        done = await self.op(op["id"])
        self.assertEqual(done["cancelled_by"], ADMIN, done)
        code, out, err = await self.cli("ops", "cancel", str(op["id"]))
        self.assertNotEqual(code, 0)
        self.assertIn("already ended", out + err)
    async def test_cancel_without_the_running_pserv_needs_force(self):
        await self.start()
        op = await self.power("node1", "on")
        await self.reset_sent("node1")
        await wait_until(lambda: self._running(op["id"]))
        await self.pserv.stopService()
        await wait_until(lambda: defer.succeed(not self.region.region.directory.all()))
        code, body = await self.call("POST", f"/v1/power_ops/{op['id']}/cancel", {})
        self.assertEqual(code, 503, body)
        self.assertIsNone((await self.op(op["id"]))["cancelled_by"])
        code, body = await self.call("POST", f"/v1/power_ops/{op['id']}/cancel",
                                     {"force": True, "requester": "dave"})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["state"], "cancelled")
        self.assertIn("forced", body["error"])


class ManualTests(LifecycleMixin, DatabaseMixin, unittest.TestCase):
    MANUAL = {"mode": "single", "agents": [{"driver": "manual",
                                            "params": {"label": "rack 4, slot 12"}}]}
    async def test_operator_confirms_a_manual_action(self):
        await self.start(nodes=("node2",))
        await self.add_node("hand", power=self.MANUAL)
        op = await self.power("hand", "on")
        await wait_until(lambda: self._state(op["id"], "running"))
        # The poller leaves the manual node alone.
        self.assertEqual(await self.clean_poll_round(), [])
        node = await self.get("/v1/nodes/hand")
        self.assertIsNone(node["last_queried_at"])
        # A wrong state is refused and changes nothing.
        code, body = await self.call("POST", f"/v1/power_ops/{op['id']}/confirm",
                                     {"state": "off"})
        self.assertEqual(code, 409, body)
        self.assertEqual((await self.op(op["id"]))["state"], "running")
        code, body = await self.call("POST", f"/v1/power_ops/{op['id']}/confirm",
                                     {"state": "banana"})
        self.assertEqual(code, 400, body)
        code, body = await self.call("POST", f"/v1/power_ops/{op['id']}/confirm",
                                     {"state": "on", "requester": "erin"})
        self.assertEqual(code, 202, body)
        done = await self.wait_op(op["id"])
        self.assertEqual((done["state"], done["confirmed_by"]), ("succeeded", ADMIN), done)

        async def recorded():  # the outcome's state lands in its own transaction
            node = await self.get("/v1/nodes/hand")
            return node["power_state"] == "on" and node

        node = await wait_until(recorded)
        self.assertEqual((node["desired_state"], node["power_state"]), ("on", "on"))
        # Its state stays the confirmed one through later poll rounds.
        self.assertEqual(await self.clean_poll_round(), [])
        self.assertEqual((await self.get("/v1/nodes/hand"))["power_state"], "on")
        code, body = await self.call("POST", f"/v1/power_ops/{op['id']}/confirm",
                                     {"state": "on"})
        self.assertEqual(code, 409, body)
    async def test_cli_confirms_and_non_manual_nodes_refuse(self):
        await self.start(nodes=("node1",))
        await self.add_node("hand", power=self.MANUAL)
        op = await self.power("hand", "off")
        await wait_until(lambda: self._state(op["id"], "running"))
        code, out, err = await self.cli("ops", "confirm", str(op["id"]), "--state", "off")
        self.assertEqual(code, 0, out + err)
        done = await self.wait_op(op["id"])
        self.assertEqual(done["state"], "succeeded")
        other = await self.power("node1", "on")
        code, body = await self.call("POST", f"/v1/power_ops/{other['id']}/confirm",
                                     {"state": "on"})
        self.assertIn(code, (400, 409), body)
    async def test_unconfirmed_manual_action_fails_at_its_deadline(self):
        await self.start(nodes=())
        power = {"mode": "single", "agents": [{"driver": "manual", "params": {
            "label": "rack 9", "timeout": 0.5}}]}
        await self.add_node("hand", power=power)
        op = await self.power("hand", "on")
        done = await self.wait_op(op["id"])
        self.assertEqual(done["state"], "failed", done)
        self.assertIn("not confirmed", done["error"])

    async def _state(self, op_id, state):
        return (await self.op(op_id))["state"] == state


class RefreshTests(LifecycleMixin, DatabaseMixin, unittest.TestCase):
    """
    Issue 14: the poller's refresh is incremental (only the nodes changed
    since a cursor); correctness must not hang on it.
    """

    def changed_system(self, node, system):
        """Point ``node`` at another system behind the region's back (no push)."""
        conn = psycopg2.connect(self.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE nodes SET power = jsonb_set(power, '{agents,0,params,system}',"
                        " to_jsonb(%s::text)) WHERE name = %s", (system, node))
        conn.close()

    def system_of(self, pserv, node):
        try:
            return pserv.executor.config(node)["agents"][0]["params"]["system"]
        except KeyError:
            return None

    async def test_a_node_changed_while_the_pserv_was_away_is_learnt_on_reconnection(self):
        await self.start()
        await wait_until(lambda: defer.succeed(self.system_of(self.pserv, "node2") == "node2"))
        await self.pserv.link.refresh()
        self.assertTrue(self.pserv.link.incremental)  # it has a cursor
        await self.stop_region()
        await wait_until(lambda: defer.succeed(not self.pserv.link.connected))
        self.changed_system("node1", "node2")
        await self.start_region()
        await wait_until(self.connected_pservs, timeout=40)
        await wait_until(lambda: defer.succeed(self.system_of(self.pserv, "node1") == "node2"))

    async def test_an_incremental_refresh_learns_a_change_and_a_lost_dispatch(self):
        await self.start()
        await wait_until(lambda: defer.succeed(self.system_of(self.pserv, "node2") == "node2"))
        await self.pserv.link.refresh()
        self.assertTrue(self.pserv.link.incremental)
        self.changed_system("node2", "node1")
        conn = psycopg2.connect(self.dsn)
        with conn, conn.cursor() as cur:  # journalled, never dispatched: a lost dispatch
            cur.execute("INSERT INTO power_ops (node, action) VALUES ('node1', 'on')"
                        " RETURNING id")
            [op_id] = cur.fetchone()
        conn.close()
        self.assertEqual(await self.pserv.link.refresh(incremental=True), "incremental")
        self.assertEqual(self.system_of(self.pserv, "node2"), "node1")
        done = await self.wait_op(op_id)
        self.assertEqual(done["state"], "succeeded", done)
        self.assertEqual(self.sim.systems["node1"].power_state, "On")
