"""
The CLI says plainly what would otherwise go wrong in silence, against a
real region: ``node add`` to a cluster nobody has heard of (a typo) is
refused unless ``--create-cluster`` asks for it, and ``power`` (with or
without ``--wait``) warns when no live pserv serves the node's cluster.
"""

from twisted.trial import unittest

from tests.pg import DatabaseMixin
from tests.system import SystemMixin, wait_until


class ClusterChecksTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 60

    def add_argv(self, name, cluster, *extra):
        return ("node", "add", name, "--cluster", cluster, "--driver", "redfish",
                "-p", f"url={self.sim.url}", "-p", "username=admin",
                "-p", "password=sim-pass", "-p", f"system={name}", *extra)
    async def test_node_add_to_an_unknown_cluster_needs_create_cluster(self):
        await self.start_region()
        code, out, err = await self.cli(*self.add_argv("node1", "rakc1"))
        self.assertEqual(code, 2, err)
        self.assertIn("cluster 'rakc1' is unknown (known: none)", err)
        self.assertIn("--create-cluster", err)
        self.assertEqual(await self.get("/v1/nodes"), [])  # nothing written
        self.assertEqual(await self.get("/v1/clusters"), [])
        code, out, err = await self.cli(*self.add_argv("node1", "c1", "--create-cluster"))
        self.assertEqual(code, 0, err)
        # now known: no flag needed for the next node
        code, out, err = await self.cli(*self.add_argv("node2", "c1"))
        self.assertEqual(code, 0, err)
        code, out, err = await self.cli(*self.add_argv("node3", "c2"))
        self.assertIn("cluster 'c2' is unknown (known: c1)", err)
    async def test_power_says_when_no_live_pserv_serves_the_cluster(self):
        await self.start_region()
        await self.add_node("node1")
        code, out, err = await self.cli("power", "on", "node1")
        self.assertEqual(code, 0, err)
        self.assertIn("warning: no live pserv serves cluster c1 (node(s) node1)", err)
        self.assertIn("stays pending until one connects", err)
        code, out, err = await self.cli("power", "off", "node1", "--wait", "--timeout", "0.5")
        self.assertNotEqual(code, 0)
        self.assertIn("warning: no live pserv serves cluster c1", err)
        self.assertIn("--wait waits until one connects", err)
        # with a live pserv, no warning, and the request runs
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        code, out, err = await self.cli("power", "on", "node1", "--wait", "--timeout", "30")
        self.assertEqual(code, 0, out + err)
        self.assertNotIn("warning", err)

    async def test_circuits_and_their_budgets(self):
        await self.start_region()
        code, out, err = await self.cli(*self.add_argv("node1", "c1", "--create-cluster",
                                                       "--circuit", "rack7-A"))
        self.assertEqual(code, 0, err)
        self.assertEqual((await self.get("/v1/nodes/node1"))["circuit"], "rack7-A")
        code, out, err = await self.cli("cluster", "circuit", "set", "c1", "rack7-A",
                                        "--max-on", "4", "--spacing", "2")
        self.assertEqual(code, 0, err)
        self.assertIn("at most 4 power-on(s) at once, 2s apart", out)
        code, out, err = await self.cli("cluster", "circuit", "list", "c1")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"rack7-A\s+4\s+2s\s+1")
        [cluster] = await self.get("/v1/clusters")
        self.assertEqual(cluster["circuits"],
                         [{"name": "rack7-A", "max_on": 4, "spacing": 2.0, "nodes": 1}])
        # Bad input names the field and changes nothing.
        code, out, err = await self.cli("cluster", "circuit", "set", "c1", "rack7-A",
                                        "--max-on", "0")
        self.assertNotEqual(code, 0)
        self.assertIn("max_on", err)
        code, out, err = await self.cli("node", "update", "node1", "--circuit", "bad name")
        self.assertNotEqual(code, 0)
        self.assertIn("circuit", err)
        self.assertEqual(await self.get("/v1/clusters/c1/circuits"),
                         [{"name": "rack7-A", "max_on": 4, "spacing": 2.0, "nodes": 1}])
        code, out, err = await self.cli("node", "update", "node1", "--circuit", "")
        self.assertEqual(code, 0, err)
        self.assertIsNone((await self.get("/v1/nodes/node1"))["circuit"])
        code, out, err = await self.cli("cluster", "circuit", "delete", "c1", "rack7-A")
        self.assertEqual(code, 0, err)
        self.assertEqual(await self.get("/v1/clusters/c1/circuits"), [])
        code, out, err = await self.cli("cluster", "circuit", "delete", "c1", "rack7-A")
        self.assertNotEqual(code, 0)
        self.assertIn("no budget", err)
