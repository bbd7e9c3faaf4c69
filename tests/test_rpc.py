"""
The AMP protocol over real loopback connections: authentication both ways,
refusal of unauthenticated and malformed commands, and recovery paging
past AMP's 64 KiB limit.
"""

import psycopg2
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.protocols import amp
from twisted.trial import unittest

from powerctl.pserv.core import Pserv
from powerctl.pserv.executor import DriverExecutor
from powerctl.pserv.link import PservProtocol, RegionLink
from powerctl.registry import PowerActionRegistry
from powerctl.rpc import auth, commands
from tests.pg import DatabaseMixin
from tests.system import SECRET, SystemMixin, catalogue




class RegionSideTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """A hand-driven AMP client against a real region."""

    async def client(self):
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.rpc_port)
        protocol = await endpoints.connectProtocol(endpoint, amp.AMP())
        self.addCleanup(protocol.transport.loseConnection)
        return protocol

    async def authenticated(self, name="pserv-x"):
        p = await self.client()
        challenge = await p.callRemote(commands.Challenge)
        mine = auth.new_nonce()
        answer = await p.callRemote(
            commands.Authenticate, proof=auth.proof(SECRET, challenge["nonce"]), nonce=mine)
        self.assertTrue(auth.valid(SECRET, mine, answer["proof"]))
        answer = await p.callRemote(commands.Register, cluster="c1", name=name,
                                    version="test", instance="test-instance")
        p.epoch = answer["epoch"]
        return p
    async def test_commands_before_authentication_are_refused(self):
        await self.start_region()
        p = await self.client()
        for command, kwargs in [
            (commands.Register, {"cluster": "c1", "name": "x", "version": "1",
                                 "instance": "i"}),
            (commands.Recover, {"after_op": 0, "after_node": ""}),
            (commands.Heartbeat, {"actions_in_flight": 0}),
        ]:
            with self.assertRaises(commands.NotAuthenticated):
                await p.callRemote(command, **kwargs)
        self.assertEqual(await self.connected_pservs(), [])
    async def test_wrong_secret_is_refused_and_dropped(self):
        await self.start_region()
        p = await self.client()
        lost = defer.Deferred()
        p.connectionLost = lambda reason: lost.callback(None)
        challenge = await p.callRemote(commands.Challenge)
        with self.assertRaises(commands.AuthenticationFailed):
            await p.callRemote(commands.Authenticate,
                               proof=auth.proof(b"not-the-secret", challenge["nonce"]),
                               nonce=auth.new_nonce())
        await lost.addTimeout(5, reactor)
    async def test_malformed_reports_are_refused_and_change_nothing(self):
        await self.start_region()
        await self.add_node("node1")
        op = await self.power("node1", "on")
        p = await self.authenticated()
        with self.assertRaises(commands.BadArguments):
            await p.callRemote(commands.ReportOutcome, operation_id=op["id"], outcome="exploded",
                               epoch=p.epoch,
                               observed_state="", agent="", error="", coalesced_into=0,
                               superseded_by=0)
        with self.assertRaises(commands.BadArguments):
            await p.callRemote(commands.ReportPowerState, epoch=p.epoch,
                               states=[{"node": "node1", "state": "sideways"}])
        with self.assertRaises(commands.BadArguments):
            await p.callRemote(commands.ReportPowerState, states={"not": "a list"},
                               epoch=p.epoch)
        self.assertEqual((await self.op(op["id"]))["state"], "pending")
        self.assertEqual((await self.get("/v1/nodes/node1"))["power_state"], "unknown")
    async def test_reports_are_recorded_and_idempotent(self):
        await self.start_region()
        await self.add_node("node1")
        op = await self.power("node1", "off")
        p = await self.authenticated()
        args = dict(operation_id=op["id"], outcome="succeeded", observed_state="off",
                    agent="0:redfish", error="", coalesced_into=0, superseded_by=0,
                    epoch=p.epoch)
        self.assertTrue((await p.callRemote(commands.ReportOutcome, **args))["recorded"])
        self.assertFalse((await p.callRemote(commands.ReportOutcome, **args))["recorded"])
        done = await self.op(op["id"])
        self.assertEqual((done["state"], done["pserv"], done["agent"]),
                         ("succeeded", "pserv-x", "0:redfish"))
        self.assertEqual((await self.get("/v1/nodes/node1"))["power_state"], "off")
    async def test_late_outcomes_never_rewrite_a_terminal_operation(self):
        await self.start_region()
        await self.add_node("node1")
        p = await self.authenticated()
        ops = [await self.power("node1", "on") for _ in range(4)]
        firsts = [("succeeded", "on", "", 0), ("failed", "", "timeout: slow", 0),
                  ("superseded", "", "", ops[3]["id"]), ("cancelled", "", "by carol", 0)]
        for op, (outcome, seen, error, by) in zip(ops, firsts):
            await p.callRemote(commands.ReportOutcome, operation_id=op["id"], outcome=outcome,
                               epoch=p.epoch,
                               observed_state=seen, agent="", error=error, coalesced_into=0,
                               superseded_by=by)
        for op, (outcome, *_rest) in zip(ops, firsts):
            for late in ("succeeded", "failed", "cancelled"):
                answer = await p.callRemote(
                    commands.ReportOutcome, operation_id=op["id"], outcome=late, epoch=p.epoch,
                    observed_state="off" if late == "succeeded" else "", agent="late",
                    error="late" if late != "succeeded" else "", coalesced_into=0,
                    superseded_by=0)
                self.assertFalse(answer["recorded"], (outcome, late))
            final = await self.op(op["id"])
            self.assertEqual((final["state"], final["agent"]), (outcome, None), final)
    async def test_a_failed_change_is_not_a_failed_poll(self):
        await self.start_region()
        await self.add_node("node1")
        p = await self.authenticated()
        for _ in range(4):
            op = await self.power("node1", "on")
            await p.callRemote(commands.ReportOutcome, operation_id=op["id"], outcome="failed",
                               epoch=p.epoch,
                               observed_state="", agent="", error="no route",
                               error_kind="unreachable", coalesced_into=0, superseded_by=0)
        store = self.region.region.store
        node = await store.nodes.get("node1")
        self.assertEqual((node["failed_polls"], node["responsive"]), (0, True))
        self.assertEqual(node["last_error"], "unreachable: no route")
    async def test_recovery_fails_operations_whose_configuration_no_longer_resolves(self):
        """A whole page of them: the cursor moves on (it used to index an empty page)."""
        await self.start_region()
        await self.add_node("node1")
        await self.add_node("node2")
        conn = psycopg2.connect(self.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE nodes SET power = '{\"mode\": \"single\", \"agents\":"
                        " [{\"driver\": \"removed-driver\", \"params\": {}}]}'"
                        " WHERE name = 'node1'")
            cur.execute("INSERT INTO power_ops (node, action) "
                        "SELECT 'node1', 'on' FROM generate_series(1, 150)")
        conn.close()
        good = await self.power("node2", "off")
        p = await self.authenticated()
        after_op, after_node, ops, nodes = 0, "", [], []
        for _ in range(20):
            page = await p.callRemote(commands.Recover, after_op=after_op, after_node=after_node)
            ops += page["operations"]
            nodes += page["nodes"]
            after_op, after_node = page["after_op"], page["after_node"]
            if page["done"]:
                break
        self.assertTrue(page["done"])
        self.assertEqual([o["id"] for o in ops], [good["id"]])
        self.assertEqual([n["name"] for n in nodes], ["node2"])
        failed = await self.get("/v1/power_ops?node=node1&state=failed&limit=1000")
        self.assertEqual(len(failed), 150)
        self.assertIn("removed-driver", failed[0]["error"])
        self.assertEqual(await self.get("/v1/power_ops?node=node1&state=pending"), [])
    async def test_recovery_is_paged_below_the_amp_value_limit(self):
        await self.start_region()
        await self.add_node("node1")
        await self.add_node("node2")
        conn = psycopg2.connect(self.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO power_ops (node, action) "
                        "SELECT 'node1', 'on' FROM generate_series(1, 3000)")
        conn.close()
        p = await self.authenticated()
        after_op, after_node, pages, ops, nodes = 0, "", 0, [], []
        while True:
            page = await p.callRemote(commands.Recover, after_op=after_op, after_node=after_node)
            pages += 1
            ops += page["operations"]
            nodes += page["nodes"]
            after_op, after_node = page["after_op"], page["after_node"]
            if page["done"]:
                break
            self.assertLess(pages, 100)
        self.assertEqual(len(ops), 3000)
        self.assertEqual(len({o["id"] for o in ops}), 3000)
        self.assertEqual(sorted(n["name"] for n in nodes), ["node1", "node2"])
        self.assertGreater(pages, 10)
        self.assertEqual(ops[0]["power"]["agents"][0]["params"]["password"], "sim-pass")

    async def recovery(self, p, **kwargs):
        """One whole recovery: (cursor, operation ids, node names, not_ours)."""
        after_op, after_node, ops, nodes, not_ours, cursor = 0, "", [], [], [], None
        while True:
            page = await p.callRemote(commands.Recover, after_op=after_op,
                                      after_node=after_node, **kwargs)
            cursor = page.get("cursor", cursor)
            ops += [o["id"] for o in page["operations"]]
            nodes += [n["name"] for n in page["nodes"]]
            not_ours += page.get("not_ours") or []
            after_op, after_node = page["after_op"], page["after_node"]
            if page["done"]:
                return cursor, ops, sorted(nodes), sorted(not_ours)

    async def test_an_incremental_recovery_lists_what_changed_since_its_cursor(self):
        """Issue 14: changed configurations, lock-outs and owners; every open operation."""
        await self.start_region()
        for name in ("node1", "node2", "node3", "node4"):
            await self.add_node(name)
        p = await self.authenticated()
        cursor, ops, nodes, _ = await self.recovery(p)
        self.assertEqual(nodes, ["node1", "node2", "node3", "node4"])
        # nothing changed: no node (polls change no configuration)
        await p.callRemote(commands.ReportPowerState, epoch=p.epoch, states=[
            {"node": "node1", "state": "on", "error": ""}])
        later, ops, nodes, not_ours = await self.recovery(p, changed_since=cursor)
        self.assertEqual((ops, nodes, not_ours), ([], [], []))
        self.assertGreaterEqual(later, cursor)
        conn = psycopg2.connect(self.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE nodes SET desired_state = 'on' WHERE name = 'node1'")
            cur.execute("INSERT INTO lockouts (node, agent, failures, reason, pserv)"
                        " VALUES ('node2', 0, 3, 'refused', 'pserv-x')")
            cur.execute("UPDATE nodes SET handoff_epoch = 999 WHERE name = 'node3'")
            cur.execute("INSERT INTO power_ops (node, action) VALUES ('node4', 'off')"
                        " RETURNING id")  # journalled, never dispatched
            [op_id] = cur.fetchone()
        conn.close()
        _, ops, nodes, not_ours = await self.recovery(p, changed_since=cursor)
        self.assertEqual((ops, nodes, not_ours), ([op_id], ["node1", "node2"], ["node3"]))
        # a full recovery still lists every node ours
        _, _, nodes, _ = await self.recovery(p)
        self.assertEqual(nodes, ["node1", "node2", "node4"])
        # the lock-out trigger does not stand in the way of deleting its node
        code, _ = await self.call("DELETE", "/v1/nodes/node2")
        self.assertEqual(code, 204)


@defer.inlineCallbacks
def _serve_pserv(testcase):
    """A pserv-side protocol behind a real listening port (no region auth done)."""
    executor = DriverExecutor(catalogue())
    registry = PowerActionRegistry(executor, reactor)
    link = RegionLink()
    pserv = Pserv(registry, executor, link.report)

    class Quiet(PservProtocol):
        def connectionMade(self):
            amp.AMP.connectionMade(self)  # no hand-shake: we play the region

    factory = protocol.Factory.forProtocol(
        lambda: Quiet(pserv, link, None, SECRET, reactor))
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    testcase.addCleanup(port.stopListening)
    client = yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), amp.AMP())
    testcase.addCleanup(client.transport.loseConnection)
    return client


class PservSideTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_power_commands_need_an_authenticated_region(self):
        client = yield _serve_pserv(self)
        power = {"mode": "single", "agents": [{"driver": "redfish", "params": {
            "url": "http://127.0.0.1:9", "username": "u", "password": "p"}}]}
        yield self.assertFailure(
            client.callRemote(commands.PowerOn, operation_id=1, node="n", power=power, epoch=1),
            commands.NotAuthenticated)
        yield self.assertFailure(client.callRemote(commands.ListActions, after_node="", limit=10),
                                 commands.NotAuthenticated)

    def test_json_argument_refuses_oversized_and_malformed_values(self):
        arg = commands.JSON()
        self.assertRaises(amp.TooLong, arg.toString, ["x" * 100] * 1000)
        self.assertRaises(commands.BadArguments, arg.fromString, b"{not json")
        self.assertEqual(arg.fromString(arg.toString({"a": [1, 2]})), {"a": [1, 2]})
