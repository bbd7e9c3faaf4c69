"""
The pserv's poller against real simulators: idle nodes are queried and
reported in one batch, busy nodes are skipped, and the outlets of one SNMP
PDU are read in one request per PDU.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.interface import Timing
from powerctl.drivers.snmp import SnmpDriverType
from powerctl.pserv.executor import DriverExecutor
from powerctl.pserv.poller import Poller
from powerctl.registry import PowerActionRegistry
from powerctl.sim import snmp as snmp_sim

TIMING = Timing(timeout=2.0, retries=0, verify_timeout=5.0, poll_interval=0.05)


class RecordingLink:
    connected = True
    epoch = 7  # the lease the pserv holds

    def __init__(self):
        self.batches = []

    def refresh(self):
        return defer.succeed(None)

    def send_states(self, states, epoch):
        assert epoch == self.epoch
        self.batches.append(states)
        return defer.succeed(None)


def outlet(port, n):
    return {"mode": "single", "agents": [{"driver": "snmp", "params": {
        "host": "127.0.0.1", "port": port, "family": "apc-rpdu", "outlet": n,
        "community": "public", "write_community": "private", "retries": 0}}]}


class PollerTests(unittest.TestCase):
    async def setup(self, outlets=8):
        self.pdu = await snmp_sim.start(reactor, snmp_sim.SimOptions(
            family="apc-rpdu", outlets=outlets, initial="on,off,on,off,on,off,on,off"))
        self.addCleanup(lambda: defer.maybeDeferred(self.pdu.stop))
        self.snmp = SnmpDriverType(clock=reactor, timing=TIMING)
        self.addCleanup(self.snmp.close)
        self.executor = DriverExecutor(DriverCatalogue([self.snmp]))
        self.registry = PowerActionRegistry(self.executor, reactor)
        self.link = RecordingLink()
        self.poller = Poller(self.registry, self.executor, self.link, reactor, 60, 4)
    async def test_outlets_of_one_pdu_are_read_in_one_request(self):
        await self.setup()
        for n in range(1, 9):
            self.executor.configure(f"node{n}", outlet(self.pdu.port, n))
        before = self.pdu.datagrams
        await self.poller.poll_once()
        [batch] = self.link.batches
        states = {s["node"]: s["state"] for s in batch}
        self.assertEqual(states, {f"node{n}": ("on" if n % 2 else "off") for n in range(1, 9)})
        self.assertEqual(self.pdu.datagrams - before, 1)
    async def test_busy_nodes_are_skipped_and_failures_reported(self):
        await self.setup()
        self.executor.configure("node1", outlet(self.pdu.port, 1))
        self.executor.configure("node2", outlet(self.pdu.port, 2))
        # a PDU that is not there: the batch fails, each node says why
        self.executor.configure("ghost", outlet(1, 1))
        from powerctl.registry import PowerAction

        change = PowerAction(node="node2", action="off", operation_id="op1")
        d = self.registry.submit(change)
        await self.poller.poll_once()
        await d
        states = {s["node"]: s for s in self.link.batches[0]}
        self.assertEqual(sorted(states), ["ghost", "node1"])
        self.assertEqual(states["node1"]["state"], "on")
        self.assertEqual(states["ghost"]["state"], "error")
        self.assertEqual(states["ghost"]["error_kind"], "timeout", states["ghost"])
