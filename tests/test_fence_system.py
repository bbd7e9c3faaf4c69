"""
Fencing end to end: a real PostgreSQL, a region and a pserv over AMP on
loopback, an IPMI BMC simulator and an SNMP PDU simulator.

* a single device (IPMI) is fenced, verified, and the journal names the
  level and the device with its state;
* a dual-PSU node (two outlets of a PDU, one level): both must be off;
* level 1 dead (an IPMI port nobody answers) -> level 2 (the PDU) fences,
  and the journal keeps the failed level;
* a topology no level of which can verify is refused (409) and nothing is
  journalled;
* a node already off is fenced without a command (the simulators' logs);
* a second fence soon after coalesces into the first (no hardware call);
* ``powerctl ops show`` prints the acting level and devices, ``powerctl
  node show`` the derived timeouts.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.interface import Timing
from powerctl.drivers.ipmi import IpmiDriverType
from powerctl.drivers.snmp import SnmpDriverType
from powerctl.power import PowerState
from powerctl.sim import ipmi as ipmi_sim, snmp as snmp_sim
from tests.pg import DatabaseMixin
from tests.system import SystemMixin, catalogue, free_port, wait_until

#: Short bounds: a dead BMC costs about a second.
FAST = Timing(timeout=0.5, retries=1, backoff=0.1, verify_timeout=5.0, poll_interval=0.05)


class FenceRig:
    """
    The simulators and agents of the fencing system tests (a mixin for a
    ``SystemMixin`` test case; tests/test_autofence_system.py uses it too):
    ``bmcs`` IPMI BMCs, powered on, and one SNMP PDU whose outlets start as
    ``outlets_initial``; the drivers run under ``timing``.
    """

    bmcs = 2
    outlets_initial = "on,on,on,off,on,off,off,off"
    timing = FAST

    def make_catalogue(self):
        base = catalogue()
        return DriverCatalogue([base.get(name) for name in base.names] + [
            SnmpDriverType(clock=reactor, timing=self.timing),
            IpmiDriverType(reactor, timing=self.timing)])

    async def start(self, region=None, pserv=None):
        """The simulators, then a region and a pserv (their settings, if given)."""
        self.bmc = ipmi_sim.start(reactor, {"count": self.bmcs, "latency": 0.002,
                                            "power": "on", "username": "admin",
                                            "password": "pw"})
        self.addCleanup(self.bmc.stop)
        self.pdu = await snmp_sim.start(reactor, snmp_sim.SimOptions(
            family="apc-rpdu", outlets=8, initial=self.outlets_initial, switch_delay=0.05))
        self.addCleanup(self.pdu.stop)
        await self.start_region(**(region or {}))
        await self.start_pserv(**(pserv or {}))
        await wait_until(self.connected_pservs)

    def ipmi(self, port, label=None):
        agent = {"driver": "ipmi", "params": {"host": "127.0.0.1", "port": port,
                                               "username": "admin", "password": "pw"}}
        if label:
            agent["label"] = label
        return agent

    def outlet(self, n, label=None):
        agent = {"driver": "snmp", "params": {
            "host": "127.0.0.1", "port": self.pdu.port, "family": "apc-rpdu", "outlet": n,
            "community": "public", "write_community": "private", "retries": 0}}
        if label:
            agent["label"] = label
        return agent

    def outlet_sets(self, *outlets):
        return [s for s in self.pdu.sets if s[0] in outlets]


class FenceSystemTests(FenceRig, SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 90
    nodes = ()

    async def fence(self, node):
        op = await self.power(node, "fence")
        return await self.wait_op(op["id"], timeout=30)

    async def test_single_device_then_coalesced(self):
        await self.start()
        port = self.bmc.ports[0]
        await self.add_node("n1", power={"levels": [{"agents": [self.ipmi(port, "bmc")]}]})
        op = await self.fence("n1")
        self.assertEqual(op["state"], "succeeded", op)
        self.assertEqual((op["action"], op["observed_state"], op["agent"]),
                         ("fence", "off", "bmc"))
        self.assertEqual(op["detail"]["level"], 1)
        self.assertEqual(op["detail"]["devices"], [{"agent": "bmc", "state": "off"}])
        self.assertTrue(op["detail"]["verified"])
        self.assertEqual(self.bmc.bmc(port).power, PowerState.OFF)
        commands = len(self.bmc.bmc(port).power_commands)
        self.assertEqual(commands, 1)
        node = await self.get("/v1/nodes/n1")
        self.assertEqual((node["desired_state"], node["power_state"]), ("off", "off"))

        # a second fence soon after joins the first: no hardware call
        again = await self.power("n1", "fence")
        self.assertEqual(again["state"], "succeeded", again)
        self.assertEqual(again["coalesced_into"], op["id"])
        self.assertEqual(again["detail"]["coalesced_fence"], op["id"])
        self.assertEqual(again["detail"]["devices"], [{"agent": "bmc", "state": "off"}])
        self.assertEqual(len(self.bmc.bmc(port).power_commands), commands)

        code, out, err = await self.cli("ops", "show", str(op["id"]))
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"\nlevel:\s+1: bmc=off\n")
        code, out, err = await self.cli("ops", "show", str(again["id"]))
        self.assertIn(f"joined fence {op['id']}", out)
        code, out, err = await self.cli("node", "show", "n1")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"\ntimeout fence:\s+[0-9.]+s \(level 1: [0-9.]+s \[bmc [0-9.]+s\]\)")

        # switched on since: the next fence acts again
        on = await self.wait_op((await self.power("n1", "on"))["id"], timeout=30)
        self.assertEqual(on["state"], "succeeded", on)
        third = await self.fence("n1")
        self.assertEqual((third["state"], third["coalesced_into"]), ("succeeded", None))
        self.assertEqual(self.bmc.bmc(port).power, PowerState.OFF)

    async def test_dual_psu_both_outlets_must_be_off(self):
        await self.start()
        await self.add_node("dual", power={"levels": [
            {"agents": [self.outlet(1, "psu-a"), self.outlet(2, "psu-b")]}]})
        op = await self.fence("dual")
        self.assertEqual(op["state"], "succeeded", op)
        self.assertEqual(op["detail"]["devices"], [{"agent": "psu-a", "state": "off"},
                                                   {"agent": "psu-b", "state": "off"}])
        self.assertEqual((self.pdu.outlets[1], self.pdu.outlets[2]),
                         (PowerState.OFF, PowerState.OFF))
        self.assertEqual(sorted(s[0] for s in self.outlet_sets(1, 2)), [1, 2])
        # the CLI's table says which level and devices (here of the fence joined)
        code, out, err = await self.cli("power", "fence", "dual", "--wait")
        self.assertEqual(code, 0, err)
        self.assertIn("LEVEL", out.splitlines()[0])
        self.assertIn("1: psu-a=off psu-b=off", out)
        self.assertEqual(sorted(s[0] for s in self.outlet_sets(1, 2)), [1, 2])

    async def test_level_one_dead_level_two_fences(self):
        await self.start()
        await self.add_node("fallback", power={"levels": [
            {"agents": [self.ipmi(free_port(), "dead-bmc")]},
            {"agents": [self.outlet(3, "pdu-3")]}]})
        op = await self.fence("fallback")
        self.assertEqual(op["state"], "succeeded", op)
        self.assertEqual((op["agent"], op["detail"]["level"]), ("pdu-3", 2))
        [failed] = op["detail"]["failed_levels"]
        self.assertEqual(failed["level"], 1)
        self.assertEqual(failed["devices"][0]["agent"], "dead-bmc")
        self.assertIn(failed["devices"][0]["error_kind"], ("unreachable", "timeout"))
        self.assertEqual(self.pdu.outlets[3], PowerState.OFF)
        code, out, err = await self.cli("ops", "show", str(op["id"]))
        self.assertRegex(out, r"\nlevel:\s+2: pdu-3=off\n")
        self.assertRegex(out, r"\nfailed level 1:\s+not every device is off: dead-bmc")

    async def test_unverifiable_topology_is_refused(self):
        await self.start()
        blind = {"driver": "webhook", "label": "hook",
                 "params": {"on_url": "http://127.0.0.1:9/on", "off_url": "http://127.0.0.1:9/off"}}
        await self.add_node("blind", power={"levels": [
            {"agents": [blind]}, {"agents": [{"driver": "manual", "params": {"label": "x"}}]}]})
        code, body = await self.call("POST", "/v1/nodes/blind/power", {"action": "fence"})
        self.assertEqual(code, 409, body)
        self.assertEqual(body["error"]["code"], "fence_refused")
        self.assertIn("hook (webhook)", body["error"]["message"])
        self.assertIn("1:manual (manual)", body["error"]["message"])
        self.assertEqual(await self.get("/v1/power_ops?node=blind"), [])
        node = await self.get("/v1/nodes/blind")
        self.assertIsNone(node["desired_state"])
        code, out, err = await self.cli("power", "fence", "blind")
        self.assertNotEqual(code, 0)
        self.assertIn("no level can verify", out + err)
        # trusted unverified: the operator vouches for level 1
        code, body = await self.call("PUT", "/v1/nodes/blind", {"power": {"levels": [
            {"agents": [blind], "trusted_unverified": True}]}})
        self.assertEqual(code, 200, body)
        code, body = await self.call("POST", "/v1/nodes/blind/power", {"action": "fence"})
        self.assertEqual(code, 202, body)
        # accepted and run: nobody listens on port 9, so it fails, unreachable
        op = await self.wait_op(body["id"], timeout=30)
        self.assertEqual((op["state"], op["detail"]["failed_levels"][0]["level"]),
                         ("failed", 1), op)

    async def test_already_off_succeeds_without_a_command(self):
        await self.start()
        port = self.bmc.ports[1]
        self.bmc.bmc(port).power = PowerState.OFF
        await self.add_node("off-ipmi", power={"mode": "single", "agents": [self.ipmi(port)]})
        await self.add_node("off-pdu", power={"mode": "concurrent", "agents": [
            self.outlet(4), self.outlet(6)]})
        a, b = await defer.gatherResults([defer.ensureDeferred(self.fence("off-ipmi")),
                                          defer.ensureDeferred(self.fence("off-pdu"))])
        self.assertEqual((a["state"], b["state"]), ("succeeded", "succeeded"), (a, b))
        self.assertEqual(a["detail"]["devices"], [{"agent": "0:ipmi", "state": "off"}])
        self.assertEqual(self.bmc.bmc(port).power_commands, [])
        self.assertEqual(self.outlet_sets(4, 6), [])
