"""
End to end: a real PostgreSQL, a region and pservs connected over AMP on
loopback, and a simulated Redfish service.  Power requests complete and
are journalled, supersede and coalesce, and the fleet converges after a
pserv or the region is stopped mid-operation.
"""

import json

from twisted.internet import defer
from twisted.trial import unittest

from tests.pg import DatabaseMixin
from tests.system import SystemMixin, wait_until




class PowerRequestTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 60

    async def start(self):
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        for name in self.nodes:
            await self.add_node(name)
    async def test_power_on_completes_and_is_journalled(self):
        await self.start()
        op = await self.power("node1", "on")
        self.assertIn(op["state"], ("pending", "running"))
        done = await self.wait_op(op["id"])
        self.assertEqual(done["state"], "succeeded", done)
        self.assertEqual(done["pserv"], "pserv-a")
        self.assertTrue(done["agent"])
        node = await self.get("/v1/nodes/node1")
        self.assertEqual((node["desired_state"], node["power_state"]), ("on", "on"))
        self.assertEqual(self.sim.systems["node1"].power_state, "On")
    async def test_on_then_off_on_a_slow_bmc_ends_off(self):
        self.sim.delay = 1.5
        await self.start()
        first = await self.power("node1", "on")
        await wait_until(lambda: self._running(first["id"]))
        second = await self.power("node1", "off")
        a = await self.wait_op(first["id"])
        b = await self.wait_op(second["id"])
        self.assertEqual(a["state"], "superseded", a)
        self.assertEqual(a["superseded_by"], second["id"])
        self.assertEqual(b["state"], "succeeded", b)
        await wait_until(lambda: defer.succeed(self.sim.systems["node1"].power_state == "Off"))
        node = await self.get("/v1/nodes/node1")
        self.assertEqual((node["desired_state"], node["power_state"]), ("off", "off"))

    async def _running(self, op_id):
        op = await self.op(op_id)
        return op["state"] == "running"
    async def test_duplicate_requests_coalesce(self):
        self.sim.delay = 1.0
        await self.start()
        first = await self.power("node2", "on")
        second = await self.power("node2", "on")
        a = await self.wait_op(first["id"])
        b = await self.wait_op(second["id"])
        self.assertEqual((a["state"], b["state"]), ("succeeded", "succeeded"))
        # The two dispatches race to the pserv: whichever arrives second joins
        # the first (the journal says which), and the BMC is reset once.
        [leader] = [o for o in (a, b) if o["coalesced_into"] is None]
        [joined] = [o for o in (a, b) if o["coalesced_into"] is not None]
        self.assertEqual(joined["coalesced_into"], leader["id"])
        self.assertEqual(len(self.sim.systems["node2"].resets), 1)


class RecoveryTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 90
    switch_delay = 1.5

    async def converged(self):
        if await self.open_ops():
            return False
        nodes = await self.get("/v1/nodes")
        return all(n["power_state"] == n["desired_state"] for n in nodes if n["desired_state"])
    async def test_pserv_stopped_mid_operation_converges_after_restart(self):
        await self.start_region()
        pserv = await self.start_pserv()
        await wait_until(self.connected_pservs)
        for name in self.nodes:
            await self.add_node(name)
        ops = [await self.power(n, "on") for n in self.nodes]
        await wait_until(lambda: self._all_running(ops))
        await pserv.stopService()  # SIGTERM mid-operation
        self.assertEqual(len(await self.open_ops()), len(ops))
        await self.start_pserv("pserv-b")
        await wait_until(self.converged, timeout=40)
        for op in ops:
            self.assertEqual((await self.op(op["id"]))["state"], "succeeded")
        self.assertEqual({s.power_state for s in self.sim.systems.values()}, {"On"})

    async def _all_running(self, ops):
        states = [(await self.op(o["id"]))["state"] for o in ops]
        return all(s == "running" for s in states)
    async def test_region_restarted_mid_operation_loses_nothing(self):
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        for name in self.nodes:
            await self.add_node(name)
        ops = [await self.power(n, "on") for n in self.nodes]
        await wait_until(lambda: self._all_running(ops))
        await self.stop_region()
        await self.start_region()
        await wait_until(self.converged, timeout=40)
        for op in ops:
            self.assertEqual((await self.op(op["id"]))["state"], "succeeded")


class FailoverTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 60
    switch_delay = 1.5
    async def test_work_of_a_dead_pserv_moves_to_a_live_one(self):
        await self.start_region()
        pservs = {"pserv-a": await self.start_pserv("pserv-a"),
                  "pserv-b": await self.start_pserv("pserv-b")}

        async def both():
            return len(await self.connected_pservs()) == 2

        await wait_until(both)
        await self.add_node("node1")
        op = await self.power("node1", "on")

        async def running():
            current = await self.op(op["id"])
            return current if current["state"] == "running" else None

        owner = (await wait_until(running))["pserv"]
        await pservs[owner].stopService()
        done = await self.wait_op(op["id"])
        survivor = ({"pserv-a", "pserv-b"} - {owner}).pop()
        self.assertEqual((done["state"], done["pserv"]), ("succeeded", survivor))
        self.assertEqual(self.sim.systems["node1"].power_state, "On")


class MonitoringTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 60
    nodes = ("node1",)
    async def test_polling_sees_changes_made_behind_our_back(self):
        await self.start_region()
        await self.start_pserv(poll_interval=0.3)
        await wait_until(self.connected_pservs)
        await self.add_node("node1")  # learnt by the pserv at its next refresh
        self.sim.systems["node1"].power_state = "On"  # someone pressed the button

        async def seen(state):
            return (await self.get("/v1/nodes/node1"))["power_state"] == state

        await wait_until(lambda: seen("on"))
        self.sim.systems["node1"].power_state = "Off"
        await wait_until(lambda: seen("off"))
        node = await self.get("/v1/nodes/node1")
        self.assertTrue(node["last_queried_at"])
        self.assertTrue(node["responsive"])
    async def test_failed_change_sets_last_error_and_keeps_state(self):
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        await self.add_node("node1")
        self.sim.fault("error")
        op = await self.power("node1", "on")
        done = await self.wait_op(op["id"])
        self.assertEqual(done["state"], "failed")
        self.assertTrue(done["error"].startswith("protocol:"), done["error"])
        node = await self.get("/v1/nodes/node1")
        self.assertEqual(node["power_state"], "unknown")
        self.assertTrue(node["last_error"])
        self.assertTrue(node["responsive"])


class CliAgainstRegionTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """The powerctl CLI against the real region API, pserv and simulator."""

    timeout = 60
    async def test_add_power_wait_and_list(self):
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        code, out, err = await self.cli(
            "node", "add", "node1", "--cluster", "c1", "--driver", "redfish",
            "-p", f"url={self.sim.url}", "-p", "username=admin", "-p", "password=sim-pass",
            "-p", "system=node1")
        self.assertEqual(code, 0, err)
        code, out, err = await self.cli("power", "on", "node1", "--wait", "--timeout", "30")
        self.assertEqual(code, 0, out + err)
        self.assertIn("on", out)
        code, out, err = await self.cli("node", "show", "node1", "--json")
        self.assertEqual(code, 0, err)
        self.assertNotIn("sim-pass", out)
        node = json.loads(out)
        self.assertEqual((node["desired_state"], node["power_state"]), ("on", "on"))
        code, out, err = await self.cli("power", "on", "no-such-node")
        self.assertNotEqual(code, 0)
        self.assertIn("no-such-node", err)


class RegionPagesTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    async def test_status_page_and_metrics_are_served(self):
        import treq

        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        await self.add_node("node1")
        page = await treq.get(self.api + "/", pool=self.http, headers=self.auth_headers())
        self.assertEqual(page.code, 200)
        html = (await treq.content(page)).decode()
        self.assertIn("node1", html)
        self.assertNotIn("sim-pass", html)
        metrics = await treq.get(self.api + "/metrics", pool=self.http, headers=self.auth_headers())
        text = (await treq.content(metrics)).decode()
        self.assertIn('powerctl_pservs_connected{cluster="c1"} 1', text)


class TlsTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """AMP over TLS is a matter of endpoint descriptions (ssl: / tls:)."""

    def setUp(self):
        super().setUp()
        import os

        from powerctl.sim.redfish import self_signed

        cert, key = self_signed("127.0.0.1")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "roots"))
        for path, data in (("cert.pem", cert), ("key.pem", key), ("roots/ca.pem", cert)):
            with open(os.path.join(folder, path), "wb") as f:
                f.write(data)
        self.rpc_listen = (f"ssl:{self.rpc_port}:interface=127.0.0.1:"
                           f"privateKey={folder}/key.pem:certKey={folder}/cert.pem")
        self.rpc_dial = f"tls:host=127.0.0.1:port={self.rpc_port}:trustRoots={folder}/roots"
    async def test_power_over_tls(self):
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        await self.add_node("node1")
        op = await self.power("node1", "on")
        self.assertEqual((await self.wait_op(op["id"]))["state"], "succeeded")
