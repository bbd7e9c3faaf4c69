"""
Multi-agent power through real drivers and simulators: a dual-PSU node on
two outlets of an SNMP PDU (concurrent), and a fallback node whose Redfish
primary is down (sequential, the IPMI secondary does the work).
"""

from twisted.internet import reactor
from twisted.trial import unittest

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.interface import Timing
from powerctl.drivers.ipmi import IpmiDriverType
from powerctl.drivers.redfish import RedfishDriverType
from powerctl.drivers.snmp import SnmpDriverType
from powerctl.power import PowerState
from powerctl.pserv.executor import build_node_power
from powerctl.sim import ipmi as ipmi_sim, snmp as snmp_sim
from tests.system import free_port

TIMING = Timing(timeout=2.0, retries=0, backoff=0.1, verify_timeout=5.0, poll_interval=0.05)


class MultiAgentThroughSimulators(unittest.TestCase):
    async def catalogue(self):
        types = [SnmpDriverType(clock=reactor, timing=TIMING),
                 RedfishDriverType(reactor, timing=TIMING),
                 IpmiDriverType(reactor, timing=TIMING)]
        catalogue = DriverCatalogue(types)
        self.addCleanup(catalogue.close)
        return catalogue

    def outlet(self, n):
        return {"driver": "snmp", "params": {
            "host": "127.0.0.1", "port": self.pdu.port, "family": "apc-rpdu", "outlet": n,
            "community": "public", "write_community": "private", "retries": 0}}
    async def test_concurrent_dual_psu(self):
        self.pdu = await snmp_sim.start(reactor, snmp_sim.SimOptions(
            family="apc-rpdu", outlets=4, initial="on,on,off,off", switch_delay=0.1))
        self.addCleanup(self.pdu.stop)
        catalogue = await self.catalogue()
        power = build_node_power(catalogue, {
            "mode": "concurrent", "agents": [self.outlet(1), self.outlet(2)]})
        self.assertEqual((await power.run("query")).state, PowerState.ON)
        result = await power.run("off")
        self.assertEqual(result.state, PowerState.OFF)
        self.assertEqual((self.pdu.outlets[1], self.pdu.outlets[2]),
                         (PowerState.OFF, PowerState.OFF))
        result = await power.run("cycle")
        self.assertEqual(result.state, PowerState.ON)
        self.assertEqual((self.pdu.outlets[1], self.pdu.outlets[2]),
                         (PowerState.ON, PowerState.ON))
    async def test_sequential_falls_back_to_the_secondary(self):
        bmc = ipmi_sim.start(reactor, {"count": 1, "latency": 0.002,
                                       "username": "admin", "password": "pw"})
        self.addCleanup(bmc.stop)
        catalogue = await self.catalogue()
        power = build_node_power(catalogue, {"mode": "sequential", "agents": [
            {"driver": "redfish", "params": {"url": f"http://127.0.0.1:{free_port()}",
                                              "username": "u", "password": "p"}},
            {"driver": "ipmi", "params": {"host": "127.0.0.1", "port": bmc.port,
                                          "username": "admin", "password": "pw"}},
        ]})
        result = await power.run("on")
        self.assertEqual((result.state, result.agent), (PowerState.ON, "1:ipmi"))
        self.assertEqual(bmc.state[bmc.port], "on")
