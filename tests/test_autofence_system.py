"""
Automatic fencing end to end (issue 13): a real PostgreSQL, a region and a
pserv over AMP on loopback, IPMI BMC simulators and an SNMP PDU simulator.
Each node has level 1 = its BMC and level 2 = an outlet of the PDU; the
cluster's policy is on, and every interval is short (polls 0.3 s, the
region's ``responsive_grace`` 2 s, auto-fence rounds 0.2 s, grace 1 s).
A BMC query times out in 1 s: shorter bounds (0.3 s, a grace of 0.5 s)
made a healthy node non-responsive, and auto-fenced, at a load of 10.

* One node's BMC stops answering: it turns non-responsive and, past its
  grace, is fenced with requester ``auto-fence`` through level 2 (the PDU
  outlet is off); no other node is fenced, and the node is not fenced again
  though it stays non-responsive (its BMC is dark: the outlet is off).
* Three of the four nodes' BMCs and the PDU stop answering at once: a storm.
  Nothing is journalled over many rounds, the region's log says so and
  ``/metrics`` shows ``powerctl_auto_fence_storm{cluster="c1"} 1``.
"""

import treq
from twisted.internet import reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from powerctl.drivers.interface import Timing
from powerctl.power import PowerState
from powerctl.sim.ipmi import Faults
from tests.pg import DatabaseMixin
from tests.system import SystemMixin, wait_until
from tests.test_fence_system import FenceRig

NODES = ("n1", "n2", "n3", "n4")
REGION = {"responsive_grace": 2.0, "auto_fence_interval": 0.2}
PSERV = {"poll_interval": 0.3}
#: A silent BMC costs a poll 1 s (one try: UDP on loopback is not lost).
TIMING = Timing(timeout=1.0, retries=0, backoff=0.1, verify_timeout=5.0, poll_interval=0.05)
POLICY = {"enabled": True, "grace": 1, "window": 600, "storm_share": 0.5,
          "max_per_window": 5}


class AutoFenceSystemTests(FenceRig, SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 60
    nodes = ()
    bmcs = len(NODES)
    timing = TIMING
    outlets_initial = "on"

    async def setup_cluster(self):
        """The rig, four nodes (BMC i, then outlet i), the policy on, all answering."""
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        await self.start(region=REGION, pserv=PSERV)
        self.port = {}
        for i, node in enumerate(NODES):
            self.port[node] = self.bmc.ports[i]
            await self.add_node(node, power={"levels": [
                {"agents": [self.ipmi(self.port[node], "bmc")]},
                {"agents": [self.outlet(i + 1, "pdu")]}]})
        code, body = await self.call("PUT", "/v1/clusters/c1/auto-fence", POLICY)
        self.assertEqual(code, 200, body)

        async def all_polled():
            nodes = [await self.get(f"/v1/nodes/{n}") for n in NODES]
            return all(n["responsive"] and n["power_state"] == "on" for n in nodes)

        await wait_until(all_polled, timeout=15)

    def hang(self, node):
        """The node's BMC stops answering anything."""
        self.bmc.bmc(self.port[node]).faults = Faults(hang=True)

    async def fences(self):
        ops = await self.get("/v1/power_ops?limit=1000")
        return [o for o in ops if o["action"] == "fence"]

    def storm_logged(self):
        return [e for e in self.logged if "automatic fencing held back" in formatEvent(e)]

    async def metrics(self):
        response = await treq.get(self.api + "/metrics", headers=self.auth_headers(),
                                  pool=self.http)
        self.assertEqual(response.code, 200)
        return (await treq.text_content(response)).splitlines()

    async def test_a_node_whose_bmc_stops_answering_is_fenced_through_the_pdu(self):
        await self.setup_cluster()
        self.hang("n2")

        async def non_responsive():
            return not (await self.get("/v1/nodes/n2"))["responsive"]

        await wait_until(non_responsive, timeout=15)

        async def fenced():
            ops = await self.fences()
            done = [o for o in ops if o["state"] == "succeeded"]
            return done[0] if done else None

        op = await wait_until(fenced, timeout=20)
        self.assertEqual((op["node"], op["requester"]), ("n2", "auto-fence"), op)
        self.assertEqual(op["detail"]["level"], 2, op)
        self.assertEqual(op["detail"]["devices"], [{"agent": "pdu", "state": "off"}])
        self.assertEqual(op["detail"]["failed_levels"][0]["level"], 1)
        self.assertEqual(self.pdu.outlets[2], PowerState.OFF)
        self.assertEqual([s[0] for s in self.pdu.sets], [2])  # n2's outlet only
        self.assertEqual([self.pdu.outlets[i] for i in (1, 3, 4)], [PowerState.ON] * 3)

        # The fence's outcome was an answer; the dead (now unpowered) BMC
        # makes the node non-responsive again, a new outage, proven off by
        # its outlet.  Past that outage's grace and many rounds later: it
        # was fenced already, so never again, and nobody else.
        await wait_until(non_responsive, timeout=15)
        await task.deferLater(reactor, 2 * POLICY["grace"] + 5 * REGION["auto_fence_interval"],
                              lambda: None)
        fences = await self.fences()
        self.assertEqual([o["id"] for o in fences], [op["id"]],
                         [(o["id"], o["node"], o["requester"], o["state"]) for o in fences])
        self.assertEqual(self.region.auto_fencer.stats()["c1"].fences, 1)
        self.assertEqual([s[0] for s in self.pdu.sets], [2])
        node = await self.get("/v1/nodes/n2")
        self.assertEqual((node["responsive"], node["power_state"]), (False, "off"), node)
        for other in ("n1", "n3", "n4"):
            self.assertTrue((await self.get(f"/v1/nodes/{other}"))["responsive"], other)
        self.assertEqual(self.storm_logged(), [])

    async def test_most_of_the_cluster_unreachable_is_a_storm(self):
        await self.setup_cluster()
        await wait_until(lambda: task.deferLater(
            reactor, 0, lambda: self.region.coordinator.leader), timeout=15)
        for node in ("n1", "n2", "n3"):
            self.hang(node)
        await self.pdu.stop()  # the network to the rack: PDU included

        async def non_responsive():
            nodes = [await self.get(f"/v1/nodes/{n}") for n in NODES]
            return [n["name"] for n in nodes if not n["responsive"]] == ["n1", "n2", "n3"]

        await wait_until(non_responsive, timeout=20)

        async def reported():
            return self.storm_logged()

        [event] = await wait_until(reported, timeout=10)
        text = formatEvent(event)
        self.assertIn("cluster c1: 3 of 4 nodes", text)
        self.assertIn('powerctl_auto_fence_storm{cluster="c1"} 1', await self.metrics())
        # well past the grace, many rounds later: still nothing journalled
        await task.deferLater(reactor, 3 * POLICY["grace"], lambda: None)
        self.assertEqual(await self.fences(), [])
        metrics = await self.metrics()
        self.assertIn('powerctl_auto_fence_storm{cluster="c1"} 1', metrics)
        self.assertIn('powerctl_auto_fences_total{cluster="c1"} 0', metrics)
        self.assertEqual(len(self.storm_logged()), 1)  # logged once, when it began
        self.assertTrue((await self.get("/v1/nodes/n4"))["responsive"])
