"""
Bulk power requests (``POST /v1/power``, :mod:`powerctl.region.bulk`): the
pure plan and blast-radius guard, then the route over a served API on a
real PostgreSQL -- one operation per node in one transaction, dispatched
after the commit; dry runs and refusals write nothing; roles, cluster
scopes and the audit trail.
"""

from twisted.trial import unittest

from powerctl.power import Action
from powerctl.region import bulk
from powerctl.region.api import Api
from tests.test_api import SNAPSHOT, ApiTestCase
from tests.test_powerconfig import fake_catalogue
from tests.test_store import ipmi


def _row(name, cluster="c1", power_state="on", desired_state="on"):
    return {"name": name, "cluster": cluster, "power_state": power_state,
            "desired_state": desired_state}


class PlanTests(unittest.TestCase):
    def test_what_would_change(self):
        rows = [_row("a"), _row("b", power_state="off", desired_state="off"),
                _row("c", power_state="unknown", desired_state=None)]
        changes = {a: [i.changes for i in bulk.plan(a, rows, {"c1": 3}, 1.0).items]
                   for a in Action}
        self.assertEqual(changes[Action.ON], [False, True, True])
        self.assertEqual(changes[Action.OFF], [True, False, True])
        self.assertEqual(changes[Action.CYCLE], [True, True, True])
        self.assertEqual(changes[Action.QUERY], [False, False, False])
        self.assertEqual([i.target for i in bulk.plan(Action.SOFT_OFF, rows, {}, 1).items],
                         ["off"] * 3)

    def test_the_guard_counts_selected_nodes_per_cluster(self):
        rows = [_row("a"), _row("b"), _row("x", cluster="c2")]
        totals = {"c1": 10, "c2": 100}
        self.assertEqual(bulk.plan(Action.OFF, rows, totals).over, ())  # 2/10, 1/100
        rows.append(_row("c"))
        plan = bulk.plan(Action.CYCLE, rows, totals)  # 3/10 > 20 %
        self.assertEqual((plan.over, plan.needs_confirm), (("c1",), True))
        self.assertIn("3 of the 10 nodes of cluster 'c1'", plan.refusal())
        self.assertFalse(bulk.plan(Action.ON, rows, totals).needs_confirm)
        self.assertFalse(bulk.plan(Action.QUERY, rows, totals).needs_confirm)
        self.assertFalse(bulk.plan(Action.SOFT_OFF, rows, totals, share=0.3).needs_confirm)
        self.assertTrue(bulk.plan(Action.SOFT_OFF, rows, totals, share=0.0).needs_confirm)
        doc = plan.as_json()
        self.assertEqual(doc["clusters"], {"c1": {"selected": 3, "total": 10},
                                           "c2": {"selected": 1, "total": 100}})
        self.assertEqual((doc["count"], doc["changing"]), (4, 4))

    def test_share_is_checked(self):
        for bad in (-0.1, 1.5, "0.2", True, None):
            with self.assertRaises(ValueError):
                bulk.check_share(bad)
        self.assertEqual(bulk.check_share(1), 1.0)


class BulkApiTests(ApiTestCase):
    async def fleet(self):
        for i in range(10):
            await self.store.nodes.create(f"a{i}", "c1", ipmi())
        for i in range(3):
            await self.store.nodes.create(f"b{i}", "c2", ipmi())

    async def test_nodes_selector_journals_one_operation_each(self):
        await self.fleet()
        status, doc, _ = await self.call("POST", "/power", {"action": "on",
                                                           "nodes": ["a3", "b1", "a1"]})
        self.assertEqual(status, 202, doc)
        self.assertEqual((doc["action"], doc["count"]), ("on", 3))
        self.assertEqual([o["node"] for o in doc["operations"]], ["a1", "a3", "b1"])
        self.assertEqual(doc["ids"], sorted(doc["ids"]))
        for op in doc["operations"]:
            stored = await self.store.ops.get(op["id"])
            self.assertEqual((stored["state"], stored["action"], stored["requester"]),
                             ("pending", "on", "test-admin"))
            self.assertEqual((await self.store.nodes.get(op["node"]))["desired_state"], "on")
        self.assertIsNone((await self.store.nodes.get("a0"))["desired_state"])
        # dispatched one by one, each after the commit
        self.assertEqual([op["id"] for op, _ in self.dispatched], doc["ids"])
        for _, committed in self.dispatched:
            self.assertEqual(await committed, [("pending",)])
        # the requests were audited
        rows = await self.sql("SELECT method, path, status FROM audit WHERE path = '/v1/power'")
        self.assertEqual(rows, [("POST", "/v1/power", 202)])

    async def test_blast_radius_guard_and_confirm(self):
        await self.fleet()
        # 2 of 10: within 20 %
        status, doc, _ = await self.call("POST", "/power", {"action": "off",
                                                           "nodes": ["a0", "a1"]})
        self.assertEqual((status, doc["count"]), (202, 2))
        before = await self.sql(SNAPSHOT)
        for body in ({"action": "off", "cluster": "c1"},
                     {"action": "cycle", "nodes": ["a0", "a1", "a2"]},
                     {"action": "soft-off", "nodes": ["b0"]}):  # 1 of 3 in c2
            status, doc, _ = await self.call("POST", "/power", body)
            self.assertEqual((status, doc["error"]["code"]), (409, "conflict"), body)
            self.assertIn("confirm", doc["error"]["message"])
        self.assertEqual(await self.sql(SNAPSHOT), before, "a refused bulk request wrote")
        status, doc, _ = await self.call("POST", "/power", {"action": "on", "cluster": "c1"})
        self.assertEqual((status, doc["count"]), (202, 10))  # on is not guarded
        status, doc, _ = await self.call("POST", "/power", {"action": "off", "cluster": "c1",
                                                           "confirm": True})
        self.assertEqual((status, doc["count"]), (202, 10))
        self.assertEqual({n["desired_state"] for n in await self.store.nodes.list(cluster="c1")},
                         {"off"})

    async def test_dry_run_answers_the_plan_and_writes_nothing(self):
        await self.fleet()
        await self.pool.runOperation(
            "UPDATE nodes SET power_state = 'off', desired_state = 'off' WHERE name = 'b0'")
        before = await self.sql(SNAPSHOT)
        status, doc, _ = await self.call("POST", "/power", {"action": "off", "cluster": "c2",
                                                           "dry_run": True})
        self.assertEqual(status, 200, doc)
        self.assertEqual(await self.sql(SNAPSHOT), before)
        self.assertEqual(self.dispatched, [])
        self.assertTrue(doc["dry_run"])
        self.assertTrue(doc["needs_confirm"])
        self.assertEqual([(n["node"], n["power_state"], n["target"], n["changes"])
                          for n in doc["nodes"]],
                         [("b0", "off", "off", False), ("b1", "unknown", "off", True),
                          ("b2", "unknown", "off", True)])
        self.assertEqual((doc["count"], doc["changing"]), (3, 2))
        self.assertEqual(doc["clusters"], {"c2": {"selected": 3, "total": 3}})

    async def test_bad_requests_write_nothing(self):
        await self.fleet()
        from tests.test_api import case
        await self.refused([
            case("POST", "/power", {"action": "on"}, fragment="exactly one"),
            case("POST", "/power", {"action": "on", "nodes": ["a0"], "cluster": "c1"},
                 fragment="exactly one"),
            case("POST", "/power", {"action": "on", "tags": ["x"]}, code="unknown_field",
                 fragment="'tags'"),
            case("POST", "/power", {"action": "dance", "cluster": "c1"},
                 code="invalid_action", fragment="dance"),
            case("POST", "/power", {"action": "on", "nodes": []}, fragment="nodes"),
            case("POST", "/power", {"action": "on", "nodes": "a0"}, fragment="nodes"),
            case("POST", "/power", {"action": "on", "nodes": ["a0", "a0"]},
                 fragment="'a0' is named twice"),
            case("POST", "/power", {"action": "on", "cluster": 3}, fragment="cluster"),
            case("POST", "/power", {"action": "on", "cluster": "c1", "confirm": "yes"},
                 fragment="confirm"),
            case("POST", "/power", {"action": "on", "cluster": "c1", "requester": None},
                 fragment="requester"),
            case("POST", "/power", {"action": "on", "nodes": ["a0", "ghost", "ghost2"]},
                 status=404, code="not_found", fragment="'ghost' does not exist (and 1 more)"),
            case("POST", "/power", {"action": "on", "cluster": "nowhere"}, status=404,
                 code="not_found", fragment="cluster 'nowhere'"),
        ])

    async def test_roles_and_cluster_scopes(self):
        await self.fleet()
        _, viewer = await self.tokens.create("v", "viewer")
        _, scoped = await self.tokens.create("s", "operator", ["c2"])
        status, _, _ = await self.call("POST", "/power", {"action": "on", "cluster": "c2"},
                                       token=viewer)
        self.assertEqual(status, 403)
        for body in ({"action": "on", "cluster": "c1"},
                     {"action": "on", "nodes": ["b0", "a0"]}):
            status, doc, _ = await self.call("POST", "/power", body, token=scoped)
            self.assertEqual((status, doc["error"]["code"]), (403, "forbidden"), body)
        status, doc, _ = await self.call("POST", "/power", {"action": "on", "nodes": ["b0", "b1"]},
                                         token=scoped)
        self.assertEqual((status, doc["count"]), (202, 2))
        self.assertEqual({(await self.store.ops.get(i))["requester"] for i in doc["ids"]},
                         {"s"})

    async def test_the_share_is_the_regions(self):
        await self.fleet()
        api = Api(self.store, fake_catalogue(), on_power_request=self.hook, log=self.log,
                  guard=self.guard, bulk_share=0.5)
        base = self.serve(api)
        status, doc, _ = await self.call("POST", "/power", {"action": "off", "nodes": [
            f"a{i}" for i in range(5)]}, base=base)
        self.assertEqual((status, doc["count"]), (202, 5))
        status, _, _ = await self.call("POST", "/power", {"action": "off", "nodes": [
            f"a{i}" for i in range(6)]}, base=base)
        self.assertEqual(status, 409)
        with self.assertRaises(ValueError):
            Api(self.store, fake_catalogue(), guard=self.guard, bulk_share=2)
