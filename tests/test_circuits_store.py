"""
Circuits in the region's database: the node's circuit, the cluster's
budgets, what Recover and dispatch read, assignment by circuit, and a
circuit handed over in one piece.
"""

from powerctl.region.errors import InvalidInput, NotFound
from powerctl.region.leases import Leases
from tests.test_store import StoreTestCase, ipmi


class CircuitStoreTests(StoreTestCase):
    async def test_nodes_name_circuits_and_clusters_budget_them(self):
        node = await self.store.nodes.create("n1", "c1", ipmi(), circuit="A")
        self.assertEqual(node["circuit"], "A")
        await self.store.nodes.create("n2", "c1", ipmi())
        self.assertEqual(await self.store.clusters.circuits("c1"),
                         [{"name": "A", "max_on": None, "spacing": None, "nodes": 1}])
        self.assertIsNone(await self.store.nodes.circuit_config("n2"))
        self.assertEqual(await self.store.nodes.circuit_config("n1"),
                         {"name": "A", "max_on": None, "spacing": 0.0})
        row = await self.store.clusters.set_circuit("c1", "A", 4, 2)
        self.assertEqual(row, {"name": "A", "max_on": 4, "spacing": 2.0, "nodes": 1})
        self.assertEqual(await self.store.nodes.circuit_config("n1"),
                         {"name": "A", "max_on": 4, "spacing": 2.0})
        [n1, n2] = await self.store.nodes.desired_states("c1")
        self.assertEqual((n1["circuit"], n2["circuit"]),
                         ({"name": "A", "max_on": 4, "spacing": 2.0}, None))
        await self.store.ops.request("n1", "on", requester="t")
        [op] = await self.store.ops.outstanding("c1")
        self.assertEqual(op["circuit"], {"name": "A", "max_on": 4, "spacing": 2.0})
        [cluster] = await self.store.clusters.list()
        self.assertEqual(cluster["circuits"],
                         [{"name": "A", "max_on": 4, "spacing": 2.0, "nodes": 1}])

    async def test_bad_input_names_the_field_and_changes_nothing(self):
        await self.store.nodes.create("n1", "c1", ipmi(), circuit="A")
        for max_on, spacing, field in ((0, 1, "max_on"), (True, 1, "max_on"),
                                       ("4", 1, "max_on"), (4, -1, "spacing"),
                                       (4, "2", "spacing"), (4, 7200, "spacing")):
            with self.assertRaises(InvalidInput) as caught:
                await self.store.clusters.set_circuit("c1", "A", max_on, spacing)
            self.assertIn(field, str(caught.exception))
        with self.assertRaises(InvalidInput) as caught:
            await self.store.clusters.set_circuit("c1", "bad name", 4, 1)
        self.assertIn("circuit", str(caught.exception))
        with self.assertRaises(NotFound):
            await self.store.clusters.set_circuit("nope", "A", 4, 1)
        with self.assertRaises(InvalidInput):
            await self.store.nodes.create("n2", "c1", ipmi(), circuit="a b")
        with self.assertRaises(InvalidInput):
            await self.store.nodes.update("n1", circuit=7)
        self.assertEqual((await self.store.nodes.get("n1"))["circuit"], "A")
        self.assertEqual(await self.store.clusters.circuits("c1"),
                         [{"name": "A", "max_on": None, "spacing": None, "nodes": 1}])
        with self.assertRaises(NotFound):
            await self.store.clusters.delete_circuit("c1", "A")

    async def test_a_new_circuit_is_a_change_for_the_pserv(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        row = await self.store.nodes.update("n1", circuit="A")
        self.assertEqual((row["circuit"], row["changed_for_pserv"]), ("A", True))
        row = await self.store.nodes.update("n1", circuit="A")
        self.assertFalse(row["changed_for_pserv"])
        row = await self.store.nodes.update("n1", circuit="")
        self.assertEqual((row["circuit"], row["changed_for_pserv"]), (None, True))


class CircuitOwnershipTests(StoreTestCase):
    async def lease(self, pserv):
        return (await self.leases.grant(pserv, "c1", f"{pserv}-instance"))["epoch"]

    def setUp(self):
        d = super().setUp()
        self.leases = Leases(self.pool, lease=30.0)
        return d

    async def newcomer_taking(self, names, first):
        """Lease pservs until one is chosen for the circuit ``names``: its epoch (all marked)."""
        for candidate in ("pserv-b", "pserv-c", "pserv-d", "pserv-e", "pserv-f"):
            second = await self.lease(candidate)
            result = await self.leases.assign("c1")
            if any(n in result["handoffs"].get(first, []) for n in names):
                return second
        self.fail("the circuit never chose another pserv")

    async def owners(self):
        rows = await self.sql("SELECT name, owner_epoch, handoff_epoch FROM nodes ORDER BY name")
        return {r[0]: (r[1], r[2]) for r in rows}

    async def test_a_circuit_has_one_owner_and_moves_in_one_piece(self):
        names = [f"n{i:02d}" for i in range(12)]
        for name in names:
            await self.store.nodes.create(name, "c1", ipmi(), circuit="A")
        free = [f"f{i}" for i in range(12)]
        for name in free:
            await self.store.nodes.create(name, "c1", ipmi())
        # Find two pserv names where the circuit moves to the newcomer.
        first = await self.lease("pserv-a")
        await self.leases.assign("c1")
        owners = await self.owners()
        self.assertEqual({owners[n][0] for n in names}, {first})
        second = await self.newcomer_taking(names, first)
        owners = await self.owners()
        self.assertEqual({owners[n] for n in names}, {(first, second)})  # all marked
        # The old owner releases half of them: none moves yet...
        released = await self.leases.release_nodes(first, names[:6] + free)
        self.assertFalse(set(released) & set(names))
        owners = await self.owners()
        self.assertEqual({owners[n] for n in names}, {(first, second)})
        self.assertEqual(await self.leases.owned(second, names), set())
        # ...the last of them takes the whole circuit along.
        released = await self.leases.release_nodes(first, names[6:])
        self.assertEqual(sorted(released), names)
        owners = await self.owners()
        self.assertEqual({owners[n] for n in names}, {(second, None)})
        self.assertEqual(await self.leases.owned(second, names), set(names))

    async def test_recover_names_the_nodes_a_lease_is_to_let_go_of(self):
        """
        ``nodes.releasing``: what Recover's last page asks the old owner to
        release -- marked, not released yet, of this lease and cluster only,
        in name order, at most ``limit``.
        """
        names = [f"n{i:02d}" for i in range(12)]
        for name in names:
            await self.store.nodes.create(name, "c1", ipmi(), circuit="A")
        await self.store.nodes.create("other", "c2", ipmi())
        first = await self.lease("pserv-a")
        await self.leases.assign("c1")
        self.assertEqual(await self.store.nodes.releasing("c1", first, 100), [])
        second = await self.newcomer_taking(names, first)
        self.assertEqual(await self.store.nodes.releasing("c1", first, 100), names)
        self.assertEqual(await self.store.nodes.releasing("c1", first, 3), names[:3])
        self.assertEqual(await self.store.nodes.releasing("c1", second, 100), [])
        self.assertEqual(await self.store.nodes.releasing("c2", first, 100), [])
        # Released but still waiting for the rest of its circuit: not asked again.
        await self.leases.release_nodes(first, names[:6])
        self.assertEqual(await self.store.nodes.releasing("c1", first, 100), names[6:])
        await self.leases.release_nodes(first, names[6:])
        self.assertEqual(await self.store.nodes.releasing("c1", first, 100), [])

    async def test_a_circuit_retargeted_mid_hand_over_still_moves_whole(self):
        names = [f"n{i:02d}" for i in range(12)]
        for name in names:
            await self.store.nodes.create(name, "c1", ipmi(), circuit="A")
        first = await self.lease("pserv-a")
        await self.leases.assign("c1")
        targets = []
        for candidate in [f"pserv-{c}" for c in "bcdefghijk"]:
            epoch = await self.lease(candidate)
            result = await self.leases.assign("c1")
            if any(n in result["handoffs"].get(first, []) for n in names):
                targets.append(epoch)
                if len(targets) == 1:
                    # the old owner has released half when the target changes
                    await self.leases.release_nodes(first, names[:6])
                else:
                    break
        self.assertEqual(len(targets), 2, "the circuit never chose a second new pserv")
        owners = await self.owners()
        self.assertEqual({owners[n] for n in names}, {(first, targets[1])})
        released = await self.leases.release_nodes(first, names[6:])
        self.assertEqual(sorted(released), names)
        owners = await self.owners()
        self.assertEqual({owners[n] for n in names}, {(targets[1], None)})
